"""The `korllama` command's frame: the typer app, its consoles and shared options, and `main`, which turns a
KorllamaError into one red sentence and exit code 2 (`--debug` shows the traceback instead). The subcommands live
beside it, one module per part of the pipeline; imports of heavy libraries stay inside the commands so that
`korllama --help` starts fast."""

from __future__ import annotations

import errno
import inspect
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer 0.29 bundles click; these are not re-exported
from typer.rich_utils import rich_format_error

from korllama import __version__, outputs
from korllama.choices import Decision
from korllama.defaults import CHUNK_ROWS
from korllama.errors import KorllamaError
from korllama.io import written


def _console(stderr: bool = False) -> Console:
    """A terminal gets rich's wrapping at its width; a file or a pipe gets whole lines (no 80-column wrap that
    splits paths and numbers)."""
    terminal = Console(stderr=stderr)
    if terminal.is_terminal:
        return terminal
    return Console(stderr=stderr, soft_wrap=True, width=10_000)


console = _console()
err_console = _console(stderr=True)

app = typer.Typer(
    help="Teach a language model to grade credit: data -> prompts -> model -> train -> predict -> evaluate.",
    no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Check a table against its spec, or make a synthetic loan table.", no_args_is_help=True)
app.add_typer(data_app, name="data")

SpecOption = Annotated[str | None, typer.Option(
    "--spec", "--schema", help="Table spec: built-in 'loan' (default) or a YAML spec file (see examples/students); "
                               "--schema is its older name.")]


def help_paragraphs(doc: str) -> str:
    """A command's docstring as its --help text: each prose paragraph (blank lines part them) made one line, which
    rich wraps at the terminal's width. typer's rich mode joins the first paragraph's lines but prints the others'
    line breaks as they are, so a docstring's source lines would show as ragged half-lines.

    A paragraph with an indented line (examples, a line of output) keeps its lines and their indent: an empty markup
    tag (it prints nothing) opens each indented line, or typer's cleandoc of the text after the first paragraph
    would take the indent off where only indented lines follow ("Example:" and one command)."""
    out = []
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        lines = paragraph.split("\n")
        if any(line[:1].isspace() for line in lines):
            out.append("\n".join(f"{KEEP_INDENT}{x}" if x[:1].isspace() else x for x in lines))
        else:
            out.append(" ".join(x.strip() for x in lines))
    return "\n\n".join(out)


KEEP_INDENT = "[b][/b]"


def wrap_help(*apps: typer.Typer) -> None:
    """Give every command of `apps` its docstring as `help_paragraphs` makes it (cli/__init__.py, once all are
    registered)."""
    for typer_app in apps:
        for info in typer_app.registered_commands:
            doc = info.help if info.help is not None else inspect.getdoc(info.callback)
            info.help = help_paragraphs(doc or "")


def _print_version(value: bool) -> None:
    if value:  # eager: runs before click asks for a command
        console.print(f"korllama {__version__}")
        raise typer.Exit()


_options = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
):
    _options["debug"] = debug  # main() reads it when a command fails


ConfigArg = Annotated[Path, typer.Option("--config", "-c", help="Run config YAML (configs/demo.yaml, "
                                                               "configs/seed.yaml, ...).")]
OverridesArg = Annotated[list[str] | None, typer.Argument(
    help="Config overrides as section.key=value, e.g. train.epochs=1 model.base=./my-llama", show_default=False)]


RunArg = Annotated[Path | None, typer.Argument(help="A run directory made by `korllama train`, or the trees' folder "
                                                    "made by `korllama baseline`.", show_default=False)]
BaseOption = Annotated[str | None, typer.Option(
    "--base", help="Score a bare base model instead (a folder or hub id): the 'before tuning' figures. With a "
                   "run, the run's prompt settings are used.")]


AllowUnfinishedOption = Annotated[bool, typer.Option(
    "--allow-unfinished", help="Use a run whose training did not finish (killed, or still going): its best weights "
                               "so far. Without it such a run is refused.")]

AllowUnrecordedOption = Annotated[bool, typer.Option(
    "--allow-unrecorded", help="Load a run that records no checksums of its weights (no weights.json: an older "
                               "korllama's run), unverified, with a warning. Without it such a run is refused.")]

DecisionOption = Annotated[Decision, typer.Option(
    "--decision", help="argmax: the most probable label. macro-f1: the run's decision rule, fitted on its validation "
                       "rows at training, which weighs rare labels up for a higher macro-F1 (the competition's "
                       "metric).")]

OverwriteOption = Annotated[bool, typer.Option(
    "--overwrite", help="Replace an existing --out of this command's own kind, only after the new work succeeded and "
                        "only files korllama wrote there (its .korllama-manifest.json): never a run, your own files, "
                        "a device or a FIFO. Without it an existing output is refused.")]

ChunkOption = Annotated[int | None, typer.Option(
    "--chunk-rows", min=1, help=f"Rows read, scored and written at a time (default {CHUNK_ROWS:,}): memory follows it, "
                                "not the table.")]


def figures(result) -> str:
    """'macro-F1 0.9312, accuracy 0.9402, QWK 0.9123 on 1,000 rows' of an evaluation (korllama.evaluation); no QWK
    for labels without an order."""
    qwk = f", QWK {result.qwk:.4f}" if result.qwk is not None else ""
    return f"macro-F1 {result.macro_f1:.4f}, accuracy {result.accuracy:.4f}{qwk} on {result.n:,} rows"


def _show_warning(message, category, filename, lineno, file=None, line=None):
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the typer app. Every error the user can fix — a KorllamaError from a command, or a bad
    option or argument that click refuses — is one red sentence and exit code 2; `--debug` shows tracebacks."""
    args = sys.argv[1:] if argv is None else argv
    _options["debug"] = _options["terminated"] = False
    written.clear()
    warnings.showwarning = _show_warning
    command = typer.main.get_command(app)
    outputs.locking["on"] = True  # one writer per output while this command runs (korllama.outputs.hold)
    try:
        return _run(command, args)
    finally:
        outputs.release_all()
        outputs.locking["on"] = False


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, a container stopping), raised where Ctrl-C would be, so every command cleans up
    the same way: temporary files removed, a run stopped before its first checkpoint removed."""


def _terminate(signum, frame):
    _options["terminated"] = True  # click turns the exception into Abort: remember what it was
    raise Terminated


# what the machine refused: a sentence naming the path, not a traceback (nothing partial: writes are atomic)
_REFUSED = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
            errno.EACCES: "permission denied", errno.EPERM: "the operation is not permitted",
            errno.EROFS: "the file system is read-only"}


def _machine_refused(exc: BaseException) -> str | None:
    """One sentence for a full disk or a refused permission, wherever it surfaced: an OSError, or a library's own
    error around it (safetensors: 'IoError(Os { code: 28 ...', torch: 'PytorchStreamWriter failed writing')."""
    if isinstance(exc, OSError) and exc.errno in _REFUSED:
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"{_REFUSED[exc.errno]}{where}; free space or fix the permissions, then run the command again " \
               "(nothing partial was left)."
    text = str(exc)
    for code, reason in _REFUSED.items():
        if f"code: {code}," in text or os.strerror(code) in text:
            return f"{reason} ({text.splitlines()[0][:200]}); free space or fix the permissions, then run the " \
                   "command again (nothing partial was left)."
    return None


def _run(command, args: list[str]) -> int:
    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        return _command(command, args)
    previous = signal.signal(signal.SIGTERM, _terminate)  # `korllama serve`: uvicorn installs its own as it starts
    try:
        return _command(command, args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _command(command, args: list[str]) -> int:
    try:  # not standalone: click raises its usage errors here instead of drawing them in a box
        code = command.main(args=args, prog_name="korllama", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `korllama` or `korllama data` alone: the help, as click would show it
        rich_format_error(exc)
        return exc.exit_code
    except UsageError as exc:
        return _refuse(exc.format_message() + _help_hint(exc))
    except KorllamaError as exc:
        if _options["debug"]:
            raise
        return _refuse(str(exc))
    except (KeyboardInterrupt, typer.Abort):
        return _interrupted(args)
    except Exception as exc:
        sentence = _machine_refused(exc)
        if sentence is None or _options["debug"]:
            raise
        return _refuse(sentence)
    if code == 130:  # typer turns Ctrl-C into Exit(130), returned as the code when not standalone
        return _interrupted(args)
    return code if isinstance(code, int) else 0


def _refuse(sentence: str) -> int:
    err_console.print(f"[bold red]error:[/] {escape(sentence)}", highlight=False, soft_wrap=True,
                      emoji=False)  # ':x:' in a quoted value stays ':x:', not an emoji
    return 2


def _help_hint(exc: UsageError) -> str:
    """' (see `korllama predict --help`)' for an error of one command."""
    path = exc.ctx.command_path if exc.ctx is not None else "korllama"
    return f" (see `{path} --help`)"


# commands whose every output goes through korllama.io's atomic writes, at the end of their work
_ATOMIC_COMMANDS = {"data", "predict", "evaluate", "baseline", "compare"}


def _interrupted(args: list[str]) -> int:
    """Ctrl-C (exit 130) or SIGTERM (143): say what exists now. The commands above write whole files only, and
    korllama.io lists them."""
    how = "terminated" if _options.get("terminated") else "interrupted"
    command = next((a for a in args if not a.startswith("-")), "")
    if command not in _ATOMIC_COMMANDS:
        message = how
    elif written:
        message = f"{how}; already written: {', '.join(str(p) for p in written)} (nothing else)"
    else:
        message = f"{how}; nothing written"
    err_console.print(message, highlight=False)
    return 143 if how == "terminated" else 130
