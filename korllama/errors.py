"""The one exception type users see: its message is a full sentence naming what, where and what is allowed.

The CLI prints it without a traceback (unless --debug) and exits with code 2.
"""


class KorllamaError(Exception):
    """An error in the user's input or configuration (not a bug in korllama)."""


class DataError(KorllamaError):
    """A table that cannot be read or does not match its spec.

    `row` (0-based) and `column` (the spec's alias) say where, when the problem is one cell: the HTTP service
    turns them into the location of a 422 error.
    """

    def __init__(self, message: str, *, row: int | None = None, column: str | None = None):
        super().__init__(message)
        self.row, self.column = row, column


class ConfigError(KorllamaError):
    """A config or spec file with an unknown key or a bad value."""


QUOTE_CHARS = 80


def quote(value, limit: int = QUOTE_CHARS) -> str:
    """A user's value as an error message shows it: repr()'s quoting for text, at most about `limit` characters (a
    megabyte CSV field or a 309-digit number is cut in the middle, with its length), so a sentence stays a sentence."""
    return clip(repr(value) if isinstance(value, str) else str(value), limit, len(str(value)))


def clip(text: str, limit: int = QUOTE_CHARS, length: int | None = None) -> str:
    """`text` as it is when short, else its start and end around '...' and its length (`length`, default len)."""
    if len(text) <= limit:
        return text
    keep = limit - 20
    return f"{text[:keep * 2 // 3]}...{text[-(keep // 3):]} ({length or len(text):,} characters)"


def yaml_problem(exc) -> str:
    """A YAML error in one line: its problem and where ('line 2, column 8'), not PyYAML's multi-line excerpt."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"
