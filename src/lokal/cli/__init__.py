"""The ``lokal`` command: Ollama's verbs (pull, list, show, rm, cp, run) plus ``config``.

Each command module (``models``, ``run``, ``serve`` with ``ps``/``stop``, ``bench``) registers its commands on ``app``
through a ``register(app)`` hook, listed in ``_register_commands`` below.

Errors end here: a ``LokalError`` prints ``Error: <message>`` on stderr and exits 1, never a traceback
(set LOKAL_DEBUG=1 to see one for unexpected errors).
"""

from __future__ import annotations

import sys
from typing import Any

import click
import typer
from typer.core import TyperGroup

from lokal import __version__
from lokal.errors import LokalError

try:  # recent typer raises its own (vendored click's) usage errors, no longer click's
    from typer.exceptions import TyperException as _TyperException
except ImportError:
    _TyperException = click.ClickException  # type: ignore[assignment,misc]

# Endings typer itself reports: a usage error prints the usage and exits 2, Exit/Abort are normal endings.
_TYPER_ENDINGS = (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.exceptions.Abort,
                  _TyperException)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``Error: message`` on stderr; the caller raises the returned Exit."""
    print(f"Error: {message}", file=sys.stderr, flush=True)
    return typer.Exit(code)


def _is_debug() -> bool:
    from lokal.config import Settings

    try:
        return bool(Settings().debug)
    except LokalError:
        return False


class _ErrorsAtTheEdge(TyperGroup):
    """Maps errors to ``Error: …`` and exit status 1 for every command, including under CliRunner."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LokalError as exc:
            raise fail(exc.message) from None
        except KeyboardInterrupt:
            print(file=sys.stderr)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # The reader went away (`lokal run … | head`): stop quietly, as Unix tools do. Point stdout at
            # /dev/null so the interpreter's final flush does not complain again.
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None
        except _TYPER_ENDINGS:
            raise
        except OSError as exc:  # disk, permissions: the message says it all
            if _is_debug():
                raise
            raise fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}") from None
        except Exception as exc:
            if _is_debug():
                raise
            raise fail(f"unexpected {type(exc).__name__}: {exc} (set LOKAL_DEBUG=1 for details)") from None


app = typer.Typer(
    name="lokal",
    cls=_ErrorsAtTheEdge,
    help="Run small language models locally.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(is_requested: bool) -> None:
    if is_requested:
        print(f"lokal version is {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-v", is_eager=True, callback=_print_version,
                                       help="Show version information.")) -> None:
    """Run small language models locally."""


def _register_commands() -> None:
    from lokal.cli import bench, bundles, foundry, models, run, security, serve

    for module in (models, run, serve, bench, bundles, foundry, security):
        module.register(app)


_register_commands()


def main() -> None:
    """Console-script entry point (``lokal``)."""
    app(prog_name="lokal")


__all__ = ["app", "main", "fail"]
