"""Check README.md and docs/: every command they show exists, every link resolves inside the repository.

    python docs/check_docs.py       # prints one line per problem; exit 1 when there is any

Commands are the lines of ```bash / ```sh / ```console blocks. A command is one of this package's
console scripts (its long options must be options of that command), a `make` target of the Makefile,
`python -m MODULE` (importable), `python FILE` (present in the repository), or a tool from KNOWN_TOOLS.
Links: relative links must name a file or folder of the repository (and, with #anchor, a heading of
that Markdown file); README.md links only to files in the repository. No page names a document that
is not in the repository.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
KNOWN_TOOLS = frozenset({"pip", "python", "python3", "curl", "git", "make", "bash", "cat", "ray", "systemctl",
                         "nvidia-smi", "export", "cd", "ls", "docker", "uvicorn", "serve"})
OUTSIDE = re.compile(r"DESIGN\.md|STYLE\.md|\.\./shared|shared docs")
FENCE = re.compile(r"^```(\w*)\s*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def pages() -> list[Path]:
    """README.md, bundles/README.md and every Markdown file under docs/."""
    return [ROOT / "README.md", ROOT / "bundles" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _blocks(text: str) -> tuple[list[tuple[int, str, list[str]]], list[tuple[int, str]]]:
    """(code blocks as (first line number, language, lines), prose lines as (line number, text))."""
    blocks: list[tuple[int, str, list[str]]] = []
    prose: list[tuple[int, str]] = []
    current: tuple[int, str, list[str]] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line.strip())
        if current is None and match:
            current = (number + 1, match.group(1).lower(), [])
        elif current is not None and line.strip() == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            current[2].append(line)
        else:
            prose.append((number, line))
    return blocks, prose


def commands(lines: list[str]) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments, prompts and env assignments dropped."""
    joined: list[str] = []
    buffer = ""
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("$ "):
            stripped = stripped[2:]
        if buffer:
            stripped = buffer + " " + stripped
        if stripped.endswith("\\"):
            buffer = stripped[:-1].strip()
            continue
        buffer = ""
        if stripped and not stripped.startswith("#"):
            joined.append(stripped)
    out: list[list[str]] = []
    for line in joined:
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()
        command: list[str] = []
        for word in [*words, ";"]:
            if word in (";", "&&", "||", "|"):
                while command and ENV_ASSIGNMENT.match(command[0]):
                    command.pop(0)
                if command:
                    out.append(command)
                command = []
            else:
                command.append(word)
    return out


def _scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"].get("scripts", {})


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.MULTILINE))


def _script_options(entry: str) -> set[str] | None:
    """The long options of a click console script ('module:attr'); None when it cannot be imported."""
    module, _, attr = entry.partition(":")
    try:
        command = getattr(importlib.import_module(module), attr)
    except Exception:  # noqa: BLE001 -- reported as a problem by the caller
        return None
    options: set[str] = set()
    for param in getattr(command, "params", []):
        options.update(getattr(param, "opts", []))
        options.update(getattr(param, "secondary_opts", []))
    return options


def check_command(words: list[str], scripts: dict[str, str], targets: set[str]) -> str | None:
    """None when the command exists, else what is wrong."""
    name = words[0]
    if name in scripts:
        options = _script_options(scripts[name])
        if options is None:
            return f"{name}: its entry point {scripts[name]} cannot be imported"
        unknown = [w.split("=", 1)[0] for w in words[1:] if w.startswith("--") and w.split("=", 1)[0] not in options]
        return f"{name}: no option {', '.join(unknown)}" if unknown else None
    if name == "make":
        missing = [w for w in words[1:] if not w.startswith("-") and "=" not in w and w not in targets]
        return f"make: no target {', '.join(missing)} in the Makefile" if missing else None
    if name in ("python", "python3") and len(words) > 1:
        if words[1] == "-m" and len(words) > 2:
            return None if importlib.util.find_spec(words[2]) else f"python -m {words[2]}: no such module"
        if words[1].endswith(".py"):
            return None if (ROOT / words[1]).is_file() else f"python {words[1]}: no such file in the repository"
    if name.startswith(("./", ".venv/")):
        return None if (ROOT / name).exists() else f"{name}: no such file"
    if name in KNOWN_TOOLS:
        return None
    return f"{name}: not a command of this package, a make target or a known tool"


def _slug(heading: str) -> str:
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    _, prose = _blocks(page.read_text(encoding="utf-8"))
    return {_slug(line.lstrip("#")) for _, line in prose if line.startswith("#")}


def check_link(page: Path, target: str) -> str | None:
    """None when `target` (a link on `page`) resolves, else what is wrong."""
    if target.startswith(("http://", "https://")):
        return f"{target}: README.md links only to files in the repository" if page.name == "README.md" and \
            page.parent == ROOT else None
    if target.startswith("mailto:"):
        return None
    path_part, _, anchor = target.partition("#")
    resolved = (page.parent / path_part).resolve() if path_part else page
    try:
        resolved.relative_to(ROOT)
    except ValueError:
        return f"{target}: points outside the repository"
    if not resolved.exists():
        return f"{target}: no such file"
    if anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
        return f"{target}: no heading #{anchor} in {resolved.relative_to(ROOT)}"
    return None


def problems() -> list[str]:
    """Every problem found, as 'file:line: message'."""
    scripts, targets = _scripts(), _make_targets()
    found: list[str] = []
    for page in pages():
        if not page.exists():
            continue
        rel = page.relative_to(ROOT)
        text = page.read_text(encoding="utf-8")
        blocks, prose = _blocks(text)
        for start, language, lines in blocks:
            if language in ("bash", "sh", "shell", "console"):
                for words in commands(lines):
                    message = check_command(words, scripts, targets)
                    if message:
                        found.append(f"{rel}:{start}: {message}")
        for number, line in prose:
            for target in LINK.findall(line):
                message = check_link(page, target)
                if message:
                    found.append(f"{rel}:{number}: {message}")
            if OUTSIDE.search(line):
                found.append(f"{rel}:{number}: names a document that is not in the repository: {line.strip()}")
    return found


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    print(f"docs-check: {len(pages())} pages, {len(found)} problem(s)", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
