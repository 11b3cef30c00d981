"""The CUDA path checked in one run of a few minutes, with nothing to download; DEV=cpu dry-runs every step.

    DEV=cuda python benchmarks/gpu_check.py [--workdir DIR] [--size tiny|small]   # a GPU, textclassify[gpu]
    DEV=cpu  .venv/bin/python benchmarks/gpu_check.py                             # the same steps on the CPU

Steps:
  0. environment: onnxruntime and its providers, the CUDA libraries preloaded, torch and whether it sees a GPU;
  1. a bundle from the test fixtures (tests/support: a RoBERTa built from a config, a fusion head trained on
     keyword scores), exported with fp16 -- on a CUDA machine its fp16 check runs on CUDA -- plus the torch
     encoder saved beside it; --workdir reuses one prepared earlier (build it on a CPU machine with the
     [train,export] extras and carry it, where the GPU machine cannot export); --size small is MiniLM's
     shape (6 layers, hidden 384, random weights) for timings that mean something, tiny the 2-layer fixture;
  2. provider truth: fp32 and fp16 loaded with providers="cuda"; asserts the encoder session runs on CUDA and
     prints ONNX Runtime's node placement (its verbose log), flagging compute ops placed on the CPU;
  3. agreement of fp32 and fp16 on the device with CPU fp32: argmax agreement and max |dp| (no-LLM answers:
     llm_gate=0, so no LLM server is needed);
  4. 8 threads calling predict on their own chunks give the sequential answers;
  5. encoder throughput at batch 32 and 64 on identical pre-tokenised batches: fp32 and fp16 (IO binding)
     on the device, ORT fp32 on the CPU, and torch eager on the same device where torch sees it.
Targets on a GPU: fp16 + IO binding >= 5x torch eager on the same GPU (>= 20x ORT CPU where torch has no
CUDA), >= 99.5% agreement with CPU fp32, 8 threads equal to sequential, no compute node on the CPU.
With DEV=cpu each CUDA-only assertion is printed as what it would check, and the ratios are CPU ones.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support (fixtures) lives in the repo
DEV = os.environ.get("DEV", "cuda")
LABELS = ["billing", "shipping", "technical"]
BATCHES = (32, 64)
N_TEXTS = 512
THREADS = 8
# Op types that do the arithmetic: one of these placed on the CPU in a CUDA session costs device copies.
# ONNX Runtime places shape arithmetic (Shape, Gather on shapes, Concat of dims, ...) on the CPU on purpose.
COMPUTE_OPS = {"MatMul", "Gemm", "Attention", "MultiHeadAttention", "SkipLayerNormalization", "LayerNormalization",
               "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization", "BiasGelu", "FastGelu", "Gelu",
               "Softmax", "Tanh", "Erf", "MatMulInteger", "DynamicQuantizeLinear", "FusedMatMul"}


def say(message: str = "") -> None:
    print(message, flush=True)


def quiet_transformers() -> None:
    """No progress bars from loading and saving weights: the check's own lines are the output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def environment() -> dict:
    import onnxruntime as ort

    from textclassify.runtime.sessions import preload_cuda_libraries

    info = {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(), "torch_cuda": False}
    if DEV == "cuda":
        preload_cuda_libraries()
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = bool(torch.cuda.is_available())
        info["gpu"] = torch.cuda.get_device_name(0) if info["torch_cuda"] else None
    except ImportError:
        info["torch"] = None
    for key, value in info.items():
        say(f"  {key}: {value}")
    if DEV == "cuda" and "CUDAExecutionProvider" not in info["providers"]:
        say("FAIL: this onnxruntime offers no CUDAExecutionProvider: install textclassify[gpu] "
            "(onnxruntime-gpu[cuda,cudnn]) instead of onnxruntime")
        sys.exit(2)
    return info


def build(workdir: Path, size: str) -> None:
    """The fixture bundle (fp16 included) in workdir/bundle and its torch encoder in workdir/torch_encoder."""
    import torch

    from tests.support.data import make_tickets
    from tests.support.fitted_model import make_fitted_model
    from tests.support.tiny_model import build_tiny_roberta
    from textclassify.export import export_bundle

    quiet_transformers()
    torch.manual_seed(0)
    texts = [t for t, _ in make_tickets(400, seed=1)]
    model_dir = build_tiny_roberta(texts, workdir / "encoder_source")
    if size == "small":  # MiniLM's shape, random weights, the fixture's tokenizer
        from transformers import RobertaConfig, RobertaForSequenceClassification

        base = RobertaConfig.from_pretrained(model_dir)
        cfg = RobertaConfig(vocab_size=base.vocab_size, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                            intermediate_size=1536, max_position_embeddings=base.max_position_embeddings,
                            pad_token_id=base.pad_token_id)
        RobertaForSequenceClassification(cfg).save_pretrained(model_dir)
    fitted = make_fitted_model(model_dir, LABELS, multi_label=False)
    export_bundle(fitted, workdir / "bundle", fp16=True, progress=False)
    fitted.model_.encoder.save_pretrained(workdir / "torch_encoder")


@contextmanager
def captured_stderr():
    """ONNX Runtime logs from C++ straight to file descriptor 2: catch it there."""
    with tempfile.TemporaryFile(mode="w+b") as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        box: list[str] = []
        try:
            yield box
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            box.append(sink.read().decode("utf-8", "replace"))


def node_placement(graph: Path, providers: str) -> tuple[dict[str, int], dict[str, list[str]], bool]:
    """Per provider, how many nodes ONNX Runtime placed there and which (from its verbose log; it lists the
    nodes only when they are spread over several providers), and whether it warned about the spread."""
    from textclassify.runtime.sessions import inference_session, plan_providers

    plan = plan_providers(providers)
    options = plan.session_options()
    options.log_severity_level = 0
    with captured_stderr() as log:
        inference_session(str(graph), plan.providers, options, plan.provider_options())
    text = log[0]
    counts: dict[str, int] = {}
    placed: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"(All nodes|Node\(s\)) placed on \[(\w+)\]\. Number of nodes: (\d+)", line)
        if m:
            current = None if m.group(1) == "All nodes" else m.group(2)
            counts[m.group(2)] = int(m.group(3))
            placed.setdefault(m.group(2), [])
            continue
        m = re.search(r"VerifyEachNodeIsAssignedToAnEp\]\s+(\w+) \((.*)\)\s*$", line)
        if m and current is not None:
            placed[current].append(f"{m.group(1)} ({m.group(2)})")
    return counts, placed, "were not assigned to the preferred execution providers" in text


def check_providers(workdir: Path, device: str) -> bool:
    from textclassify.runtime import constants as K
    from textclassify.runtime import load_bundle

    ok = True
    for variant, name in (("fp32", K.ENCODER_FILE), ("fp16", K.ENCODER_FP16_FILE)):
        with load_bundle(workdir / "bundle", providers=device, variant=variant, llm_gate=0.0, cache_dir=None) as b:
            say(f"  {variant}: providers in use {b.providers}; {b.variant_reason}")
            if DEV == "cuda":
                ok &= b.providers[0] == "CUDAExecutionProvider"
            else:
                say("    on CUDA: would assert providers[0] == 'CUDAExecutionProvider' (the session really got CUDA)")
        counts, placed, warned = node_placement(workdir / "bundle" / name, device)
        say(f"  {name} node placement: {counts or 'not logged'}; 'Some nodes were not assigned' warning: {warned}")
        on_cpu = placed.get("CPUExecutionProvider", [])
        compute = [n for n in on_cpu if n.split(" ")[0] in COMPUTE_OPS]
        if DEV == "cuda":
            say(f"    on the CPU: {on_cpu or 'none'}")
            say(f"    compute nodes on the CPU: {compute or 'none'}")
            ok &= not compute
        else:
            say("    on CUDA: would list the nodes placed on CPUExecutionProvider and assert none is a compute op")
    return ok


def texts_for_checks() -> list[str]:
    from tests.support.data import make_tickets

    return [t for t, _ in make_tickets(N_TEXTS, seed=97)]


def check_agreement(workdir: Path, device: str, texts: list[str]) -> bool:
    from textclassify.runtime import load_bundle

    with load_bundle(workdir / "bundle", providers="cpu", variant="fp32", llm_gate=0.0, cache_dir=None) as b:
        reference = b.predict_proba(texts)
    ok = True
    for variant in ("fp32", "fp16"):
        with load_bundle(workdir / "bundle", providers=device, variant=variant, llm_gate=0.0, cache_dir=None) as b:
            got = b.predict_proba(texts)
        agree = float((got.argmax(1) == reference.argmax(1)).mean())
        say(f"  {variant} on {device} vs CPU fp32, {len(texts)} texts: agreement {agree:.4f}, "
            f"max |dp| {float(np.abs(got - reference).max()):.2e}")
        ok &= agree >= 0.995
    return ok


def check_threads(workdir: Path, device: str, texts: list[str]) -> bool:
    from textclassify.runtime import load_bundle

    chunks = [texts[i::THREADS] for i in range(THREADS)]
    with load_bundle(workdir / "bundle", providers=device, variant="fp16", llm_gate=0.0, cache_dir=None) as b:
        sequential = [b.predict_proba(c) for c in chunks]
        results: list[np.ndarray | None] = [None] * THREADS

        def work(i: int) -> None:
            results[i] = b.predict_proba(chunks[i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    diff = max(float(np.abs(r - s).max()) for r, s in zip(results, sequential))
    exact = all(np.array_equal(r, s) for r, s in zip(results, sequential))
    say(f"  {THREADS} threads vs sequential (fp16 on {device}): max |dp| {diff:.2e}, bitwise equal: {exact}")
    return diff <= 1e-6


def padded_batches(workdir: Path, texts: list[str], size: int, multiple: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from textclassify.runtime.manifest import load_manifest
    from textclassify.runtime.tokenization import BundleTokenizer

    tokenizer = BundleTokenizer.from_manifest(load_manifest(workdir / "bundle"))
    ids = sorted(tokenizer.encode(texts), key=len)
    return [tokenizer.pad(ids[i:i + size], multiple_of=multiple) for i in range(0, len(ids), size)]


def _median_seconds(run, batches, repeats: int) -> float:
    run(batches[0])  # warm-up at the first shape
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            run(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timings(workdir: Path, device: str, texts: list[str], info: dict, repeats: int) -> bool:
    from textclassify.runtime import constants as K
    from textclassify.runtime.sessions import CUDA_PAD_MULTIPLE, plan_providers

    on_gpu = DEV == "cuda"
    ok = True
    engines: dict[str, object] = {}
    for label, providers, name in (("fp32 " + device, device, K.ENCODER_FILE), ("fp16 " + device, device,
                                   K.ENCODER_FP16_FILE), ("fp32 ORT CPU", "cpu", K.ENCODER_FILE)):
        plan = plan_providers(providers)
        engines[label] = plan.open(name, str(workdir / "bundle" / name), ["input_ids", "attention_mask"],
                                   ["ml_logits"])
    torch_device = "cuda" if on_gpu and info.get("torch_cuda") else ("cpu" if not on_gpu else None)
    torch_model = None
    if torch_device is not None:
        import torch
        from transformers import AutoModelForSequenceClassification

        quiet_transformers()
        torch_model = AutoModelForSequenceClassification.from_pretrained(workdir / "torch_encoder").eval()
        torch_model.to(torch_device)
    else:
        say("  torch has no CUDA here: fp16 is compared with ORT on the CPU instead (target >= 20x)")
    for size in BATCHES:
        multiple = CUDA_PAD_MULTIPLE if on_gpu else 1
        batches = padded_batches(workdir, texts, size, multiple)
        seconds: dict[str, float] = {}
        for label, model in engines.items():
            seconds[label] = _median_seconds(
                lambda b, m=model: m.run({"input_ids": b[0], "attention_mask": b[1]}, ["ml_logits"]), batches,
                repeats)
        if torch_model is not None:
            import torch

            def run_torch(b):
                with torch.inference_mode():
                    torch_model(input_ids=torch.from_numpy(b[0]).to(torch_device),
                                attention_mask=torch.from_numpy(b[1]).to(torch_device)).logits.cpu()

            seconds[f"torch eager {torch_device}"] = _median_seconds(run_torch, batches, repeats)
        rates = {k: len(texts) / v for k, v in seconds.items()}
        say(f"  batch {size}: " + ", ".join(f"{k} {v:,.0f} texts/s" for k, v in rates.items()))
        fp16 = rates[f"fp16 {device}"]
        base_key = next((k for k in rates if k.startswith("torch eager")), "fp32 ORT CPU")
        ratio = fp16 / rates[base_key]
        target = 5.0 if base_key.startswith("torch eager") else 20.0
        say(f"    fp16 {device}{' + IO binding' if on_gpu else ''} / {base_key}: {ratio:.2f}x "
            f"(target on a GPU: >= {target:.0f}x)")
        if on_gpu:
            ok &= ratio >= target
    if not on_gpu:
        say("    on CUDA: would time the same batches with IO binding on the GPU, padded to multiples of 8")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="prepared bundle + torch encoder (or built here)")
    parser.add_argument("--size", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prepare-only", action="store_true", help="build the bundle into --workdir and stop")
    args = parser.parse_args()
    if DEV not in ("cuda", "cpu"):
        sys.exit(f"DEV must be 'cuda' or 'cpu' (got {DEV!r})")
    device = DEV
    started = time.perf_counter()
    say(f"gpu_check: DEV={DEV}" + ("  (dry run: every step on the CPU; CUDA-only assertions are printed)"
                                   if DEV == "cpu" else ""))
    say("0. environment")
    info = environment()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    say(f"1. bundle in {workdir}")
    if not (workdir / "bundle" / "manifest.json").exists():
        build(workdir, args.size)
    import json

    manifest = json.loads((workdir / "bundle" / "manifest.json").read_text())
    entry = manifest.get("parity", {}).get("fp16", {})
    say(f"  fp16 parity in the manifest: validated={entry.get('validated')}, checked_on={entry.get('checked_on')}, "
        f"agreement={entry.get('agreement')}")
    if args.prepare_only:
        return
    results: dict[str, bool | None] = {}
    texts = texts_for_checks()
    say("2. provider truth and node placement")
    results["providers"] = check_providers(workdir, device)
    say("3. agreement with CPU fp32")
    results["agreement"] = check_agreement(workdir, device, texts)
    say("4. threads")
    results["threads"] = check_threads(workdir, device, texts)
    say("5. encoder throughput")
    results["speed"] = timings(workdir, device, texts, info, args.repeats)
    if DEV == "cpu":  # provider truth and the speed targets are about CUDA: nothing to judge on a dry run
        results["providers"] = results["speed"] = None
    verdicts = {True: "PASS", False: "FAIL", None: "not judged (dry run)"}
    say(f"done in {time.perf_counter() - started:.0f} s: " + ", ".join(f"{k} {verdicts[v]}"
                                                                        for k, v in results.items()))
    if DEV == "cuda" and not all(results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
