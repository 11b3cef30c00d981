"""The repository layout cannot shadow the installed package."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _package_dirs() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["tool"]["setuptools"]["package-dir"]


def test_no_top_level_package_named_like_the_distribution():
    """Nothing in the repo root is importable as `textclassify`: the facade lives under src/."""
    assert not (ROOT / "textclassify").exists()
    assert not (ROOT / "textclassify.py").exists()
    assert _package_dirs()["textclassify"] == "src/textclassify"
    assert (ROOT / "src" / "textclassify" / "__init__.py").is_file()


def test_every_package_dir_exists_and_every_listed_package_is_mapped():
    """Each package pyproject lists has a folder with an __init__.py, found through package-dir."""
    with open(ROOT / "pyproject.toml", "rb") as fh:
        setuptools_cfg = tomllib.load(fh)["tool"]["setuptools"]
    dirs = setuptools_cfg["package-dir"]
    for package in setuptools_cfg["packages"]:
        prefix = max((name for name in dirs if package == name or package.startswith(name + ".")), key=len)
        folder = ROOT / dirs[prefix] / package[len(prefix):].lstrip(".").replace(".", "/")
        assert (folder / "__init__.py").is_file(), f"{package} -> {folder}"


def _copy_sources(dest: Path) -> None:
    """Copy what the build reads, so the build never writes into the shared working tree."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for folder in sorted({Path(d).parts[0] for d in _package_dirs().values()}):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)


@pytest.mark.timeout(300)
def test_non_editable_install_imports_from_the_repo_root(tmp_path):
    """`pip install .` into a fresh venv; Python started in the repo root imports the installed runtime."""
    src = tmp_path / "src-copy"
    _copy_sources(src)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    # The dependencies (numpy, openai, setuptools, ...) come from the test's own environment as a plain
    # path entry: .pth files there (the editable install's finder among them) are not executed.
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    deps = deps or [sysconfig.get_paths()["purelib"]]
    (site / "zz_deps.pth").write_text("\n".join(deps) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(python), "install",
         "-q", "--no-deps", "--no-build-isolation", "--no-index", str(src)],
        check=True, capture_output=True, text=True, env=env, timeout=240,
    )
    probe = (
        "import textclassify, textclassify.runtime, textclassify.train, textclassify.export\n"
        "from textclassify.runtime import load_bundle\n"
        "print(textclassify.__file__); print(textclassify.runtime.__file__); print(load_bundle.__module__)\n"
    )
    out = subprocess.run([str(python), "-c", probe], cwd=ROOT, check=True, capture_output=True, text=True,
                         env=env).stdout.splitlines()
    assert out[0].startswith(str(site)), out
    assert out[1].startswith(str(site)), out
    assert out[2] == "textclassify.runtime.bundle"


@pytest.mark.timeout(60)
def test_repo_root_with_facade_folder_would_shadow(tmp_path):
    """The check above can fail: a `textclassify/` folder in the working directory wins over site-packages."""
    (tmp_path / "textclassify").mkdir()
    (tmp_path / "textclassify" / "__init__.py").write_text("")
    probe = "import textclassify, sys; print(textclassify.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True, capture_output=True,
                         text=True).stdout.strip()
    assert out == str(tmp_path / "textclassify" / "__init__.py")
