"""Writing outputs: a file appears whole or not at all (written to a temp file beside it, then renamed); JSON holds
no NaN; an output path that cannot be written is refused before any work (`check_out_file`, `check_out_dir`)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from korllama.errors import KorllamaError

written: list[Path] = []  # every file this process completed, in order (the CLI names them after a Ctrl-C)


@contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path beside `target`; on success rename it to `target`, on error remove it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the final file gets the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, target)
        written.append(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(target: str | Path, text: str, encoding: str = "utf-8") -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_csv(target: str | Path, frame, **kwargs) -> None:
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False, **kwargs)


def write_json(target: str | Path, obj) -> None:
    write_text(target, json_text(obj))


def json_text(obj) -> str:
    """JSON that every reader accepts: NaN and infinities (a QWK over one class, a zero division) become null."""
    return json.dumps(finite(obj), indent=2, ensure_ascii=False, allow_nan=False)


def finite(obj):
    """`obj` with every non-finite float (nan, inf, numpy's too) replaced by None, containers copied."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):  # numpy float64 is a float too
        return None
    return obj


# --- refusing an output path before any work ---------------------------------------------------------------------

def check_out_file(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, an output file that could not be written: a folder, a path under a file, a place
    that takes no new files (/proc, read-only, no permission). Tried for real with a temporary file; nothing stays."""
    path = Path(path)
    if path.is_dir():
        raise KorllamaError(f"{option} {path} is a folder; it must name a file to write (e.g. {path / 'out.csv'}).")
    _check_writable_parent(path, option)
    return path


def check_out_dir(path: str | Path, option: str = "--out", files: tuple[str, ...] = ()) -> Path:
    """Refuse, before any work, an output folder that could not be made or written (it is a file, it lies under a
    file, its place takes no new files); `files` are the names the command will write in it. Nothing is created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise KorllamaError(f"{option} {path} is a file; it must name a folder (it will hold "
                            f"{', '.join(files) or 'the output files'}).")
    for name in files:
        if (path / name).is_dir():
            raise KorllamaError(f"{option} {path}: {path / name} is a folder, so {name} cannot be written there; "
                                "choose another --out.")
    if path.is_dir():
        _try_write(path, path, option)
    else:
        _check_writable_parent(path, option)
    return path


def _check_writable_parent(path: Path, option: str) -> None:
    """The nearest existing folder above `path` must be a folder that takes new files."""
    above = path.absolute().parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise KorllamaError(f"{option} {path} cannot be made: {above} is a file, not a folder.")
    _try_write(above, path, option)


def _try_write(folder: Path, path: Path, option: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=".korllama-check-", dir=folder)
    except OSError as exc:
        raise KorllamaError(f"{option} {path} cannot be written: {folder} takes no new files "
                            f"({exc.strerror or exc}).") from None
    os.close(fd)
    os.unlink(tmp)
