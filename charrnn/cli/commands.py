"""The command line: the Typer app, built from one module per command, and `main`, the console script
(`charrnn = charrnn.cli.commands:main`) with charrnn's own form for usage errors.

stdout carries only generated text (`sample`) and results (`eval`); progress, logs and errors go to stderr.
A user's mistake is one line on stderr and a documented exit code (see README "Exit codes"); `--debug` shows
the traceback instead. torch is imported only inside commands, so `--help` stays fast.
"""

from __future__ import annotations

import gc
import sys
from typing import Annotated

import typer

from . import common, corpora, evaluate, export, info, plot, runs, sample, serve, train
from ..errors import EXIT_SIGINT

app = typer.Typer(
    name="charrnn",
    help="Train character-level RNN language models, sample text from them, and measure them.",
    add_completion=True,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# the commands, in the order --help lists them
COMMANDS = [("train", train.train), ("sample", sample.sample), ("eval", evaluate.eval_),
            ("corpora", corpora.corpora), ("plot", plot.plot), ("info", info.info), ("runs", runs.runs),
            ("export", export.export), ("serve", serve.serve)]
for _name, _command in COMMANDS:
    app.command(name=_name)(_command)


def _flags_show_no_type() -> None:
    """Typer (0.29) labels every flag, --help included, `<bool>` in --help, as if it took a value: a flag shows no
    type, like the flag it is."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "charrnn_flags", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) and not getattr(self, "count", False) else shown(self, ctx)

    display_type_rich.charrnn_flags = True
    TyperOption.display_type_rich = display_type_rich


_flags_show_no_type()


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        sys.stdout.write(f"charrnn {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks instead of one-line errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
):
    common.set_debug(debug)


def main() -> None:
    # Results are UTF-8 whatever the locale (LANG=C, PYTHONIOENCODING=ascii): a file name or text in the output
    # must never end the run with UnicodeEncodeError.
    if (sys.stdout.encoding or "").lower().replace("-", "") != "utf8":
        try:
            sys.stdout.reconfigure(encoding="utf-8")
        except (AttributeError, ValueError):
            pass  # not a TextIOWrapper (embedded): leave it
    try:
        result = _run_app()
    except Exception as exc:  # click's own usage errors: an unknown option, an extra argument, a bad type
        # Typer 0.29 raises the exceptions of the click it carries inside, older Typers click's: known by name
        kinds = {kind.__name__ for kind in type(exc).__mro__}
        if "ClickException" not in kinds:
            raise
        if "NoArgsIsHelpError" in kinds:  # `charrnn` alone: the help, as usage (exit 2)
            from typer import rich_utils

            rich_utils.rich_format_error(exc)
            sys.exit(exc.exit_code)
        sys.exit(_usage_error(exc))
    except typer.Abort:
        sys.stderr.write("charrnn: interrupted\n")
        sys.exit(EXIT_SIGINT)
    sys.exit(result if isinstance(result, int) else 0)


def _run_app():
    """The command, then the interpreter's exit made quick: its last collections would walk every object torch and
    numba made (about 1.4 s after a training run's summary, on a 2-core machine); frozen, they are left to the
    process's end, which frees them at once. atexit handlers, and the closing of files, still run."""
    try:
        return app(prog_name="charrnn", standalone_mode=False)
    finally:
        gc.freeze()


def _usage_error(exc) -> int:
    """A usage error click found, in charrnn's form: `charrnn: error: MESSAGE` and at most one line more, the
    command's usage (not Typer's boxed panel). Returns the exit code (2)."""
    message = " ".join(exc.format_message().split())
    if common.speaks():
        ctx = getattr(exc, "ctx", None)
        hint = ""
        if ctx is not None:
            usage = " ".join(ctx.get_usage().split())
            usage = usage[len("Usage: "):] if usage.startswith("Usage: ") else usage
            hint = f"usage: {usage} (see {ctx.command_path} --help)\n"
        sys.stderr.write(f"charrnn: error: {message}\n{hint}")
        sys.stderr.flush()
    return exc.exit_code


if __name__ == "__main__":
    main()
