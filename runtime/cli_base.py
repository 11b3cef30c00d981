"""The error contract of the three commands (fusion-train, fusion-export, fusion-predict), in one click class.

- A user error -- a TextClassifyError, an OSError, or a usage error click found -- prints one
  `Error: ...` line on stderr and exits 1 (2 for usage errors), without a traceback.
- Any other exception is a bug: its traceback is printed, then one `Error: unexpected ...` line, exit 1.
- `--debug` lets every exception through unchanged, traceback included.
- Ctrl-C prints `Error: interrupted.` and exits 130.
"""
from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from textclassify.runtime.errors import TextClassifyError, one_line

USER_ERRORS = (TextClassifyError, OSError)


class OneLineErrorCommand(click.Command):
    """A click command with the error contract above; pass it as `@click.command(cls=OneLineErrorCommand)`."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Click's entry point (console scripts and CliRunner call it)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv
        try:
            result = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            click.echo(f"Error: {one_line(e.format_message()) or type(e).__name__}", err=True)
            sys.exit(e.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt):
            if debug:
                raise
            click.echo("Error: interrupted.", err=True)
            sys.exit(130)
        except USER_ERRORS as e:
            if debug:
                raise
            click.echo(f"Error: {one_line(e)}", err=True)
            sys.exit(1)
        except Exception as e:
            if debug:
                raise
            traceback.print_exc()
            click.echo(f"Error: unexpected {type(e).__name__}: {one_line(e)} -- a bug in textclassify, not in "
                       "your input; the traceback above says where.", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)
