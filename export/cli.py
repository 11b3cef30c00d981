"""fusion-export: a saved model folder -> an ONNX bundle (the command-line twin of `clf.export`)."""
from __future__ import annotations

import click

from textclassify.export import constants as EK
from textclassify.runtime.cli_base import OneLineErrorCommand

EPILOG = """\b
Examples:
  fusion-export --model models/v1 --output bundles/v1
  fusion-export --model models/v1 --output bundles/v1 --int8 --fp16

\b
The bundle is written only when ONNX Runtime matches PyTorch on the model's validation texts
(fp32: max |fused_logits diff| <= 1e-4; int8/fp16: >= 99% agreement); otherwise nothing is written
and an existing bundle at --output is left as it was. --output must be new, empty or a bundle
(manifest.json and the files it lists); a folder holding anything else is refused, naming the
first foreign entry, unless --force (which says what it removes).
"""


@click.command(cls=OneLineErrorCommand, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_dir", required=True, metavar="SAVED_DIR",
              help="Folder written by AutoFusionClassifier.save (or fusion-train).")
@click.option("--output", "output_dir", required=True, metavar="BUNDLE_DIR",
              help="Bundle folder to write (an existing bundle there is replaced only on success).")
@click.option("--int8", is_flag=True, help="Also write model.int8.onnx (dynamic int8 quantisation, for CPU).")
@click.option("--fp16", is_flag=True, help="Also write model.fp16.onnx (float16 weights, for CUDA).")
@click.option("--opset", type=int, default=EK.ONNX_OPSET, show_default=True, help="ONNX opset of model.onnx.")
@click.option("--max-length", type=int, default=None,
              help="Truncate texts to this many tokens (default: the trained max_length).")
@click.option("--force", is_flag=True,
              help="Replace --output even when it holds files that are not part of a bundle (they are deleted).")
@click.option("--debug", is_flag=True, help="Show the full traceback on failure.")
def main(model_dir: str, output_dir: str, int8: bool, fp16: bool, opset: int, max_length: int | None,
         force: bool, debug: bool) -> None:
    """Export a saved textclassify model to a self-contained ONNX bundle (no pickle, checked for parity)."""
    from textclassify.export.api import export_bundle
    from textclassify.export.bundle_writer import check_target, foreign_entries

    target = check_target(output_dir, force=force)  # before any work: a refused target costs nothing
    if force and target.is_dir():
        foreign = foreign_entries(target)
        if foreign:
            shown = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
            click.echo(f"--force: replacing {target} removes {len(foreign)} entr"
                       f"{'y' if len(foreign) == 1 else 'ies'} that are not part of a bundle: {shown}", err=True)
    path = export_bundle(model_dir, output_dir, int8=int8, fp16=fp16, opset=opset, max_length=max_length,
                         progress=True, force=force)
    click.echo(str(path))
