"""The `korllama` command: one subcommand per pipeline stage, plus `demo` (app.py holds the frame and `main`).

The command modules register their subcommands on import, in the pipeline's order (the order `--help` lists)."""

from korllama.cli import data, training, grading, serving  # noqa: F401, I001
from korllama.cli.app import app, main

__all__ = ["app", "main"]
