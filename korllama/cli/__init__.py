"""The `korllama` command: one subcommand per pipeline stage, plus `demo` (app.py holds the frame and `main`).

The command modules register their subcommands on import, in the pipeline's order (the order `--help` lists); then
their docstrings become help texts that rich wraps (app.wrap_help)."""

from korllama.cli import data, training, grading, serving  # noqa: F401, I001
from korllama.cli.app import app, data_app, main, wrap_help

wrap_help(app, data_app)

__all__ = ["app", "main"]
