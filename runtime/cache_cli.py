"""fusion-cache: look at and merge LLM score caches (the SQLite file of runtime.llm.cache).

One node of a cluster has its own cache_dir; `fusion-cache merge A B` copies what node A paid for into B's
cache, so that B does not ask the LLM again for texts A already scored.
"""
from __future__ import annotations

import json

import click

from textclassify.runtime.cli_base import OneLineErrorCommand
from textclassify.runtime.llm.cache import CACHE_FILE, ScoreCache

EXAMPLES = """\b
Examples:
  fusion-cache merge /mnt/node-a/cache ~/.cache/textclassify
  fusion-cache info ~/.cache/textclassify

\b
A cache is a cache_dir (holding llm_scores.sqlite3) or the .sqlite3 file itself. Rows are keyed by
provider, model, base URL, prompt version, score method, labels and text: a row helps another node
only when that node asks the same model at the same base URL.
"""


class _Group(OneLineErrorCommand, click.Group):
    """A click group with fusion-predict's error contract (one `Error:` line for a user error)."""


@click.group(cls=_Group, epilog=EXAMPLES,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Inspect and merge textclassify LLM score caches."""


@main.command(epilog=EXAMPLES)
@click.argument("source")
@click.argument("target")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
def merge(source: str, target: str, debug: bool) -> None:
    """Copy every answer of the SOURCE cache into the TARGET cache (created if missing); TARGET's rows stay."""
    cache = ScoreCache(target if not target.endswith(".sqlite3") else _folder(target))
    try:
        report = cache.merge_from(source)
        total = cache.count()
    finally:
        cache.close()
    click.echo(f"Merged {source} into {cache.path}: {report['copied']} answers copied, {report['already_here']} "
               f"already there, {total} in all; {report['meta_copied']} 'auto' resolutions copied"
               + (f", {report['meta_conflicts']} kept as they were (they differ)" if report["meta_conflicts"] else ""))


@main.command(epilog=EXAMPLES)
@click.argument("cache_dir")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
def info(cache_dir: str, debug: bool) -> None:
    """Print the cache file's path and how many answers it holds, as JSON."""
    cache = ScoreCache(cache_dir if not cache_dir.endswith(".sqlite3") else _folder(cache_dir))
    try:
        click.echo(json.dumps({"path": str(cache.path), "answers": cache.count(), "read_only": cache.read_only}))
    finally:
        cache.close()


def _folder(path: str) -> str:
    """The cache_dir of a path to its .sqlite3 file (which must be named like the cache's own file)."""
    from pathlib import Path

    p = Path(path)
    if p.name != CACHE_FILE:
        raise click.BadParameter(f"a cache file is named {CACHE_FILE} (got {p.name!r}); give its folder instead.")
    return str(p.parent)


if __name__ == "__main__":
    main()
