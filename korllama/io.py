"""Writing outputs: a file appears whole or not at all (written to a temp file beside it, then renamed); JSON holds
no NaN; what an output path may be is decided here, once, for every command (`claim_file`, `claim_dir`)."""

from __future__ import annotations

import json
import math
import os
import stat
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


# --- claiming an output path: the one rule every command that writes follows (docs/rules.md) ----------------------

def claim_file(path: str | Path, overwrite: bool = False, option: str = "--out") -> Path:
    """An output file may be a missing path, or, with --overwrite, a regular file; its folder must take new files
    and must not be a run. Anything else (a folder, a device node, a FIFO, a socket, a path under a file, /proc) is
    one sentence before any work; nothing is created."""
    path = Path(path)
    kind = _what_is(path, option)
    if kind == "folder":
        raise KorllamaError(f"{option} {path} is a folder; it must name a file to write (e.g. {path / 'out.csv'}).")
    if kind not in (None, "file"):
        raise KorllamaError(f"{option} {path} is {kind}, not a regular file; korllama writes new files only (or "
                            f"replaces its own with --overwrite): choose another {option}.")
    if kind == "file" and not overwrite:
        raise KorllamaError(f"{option} {path} already exists; pass --overwrite to replace it, or choose another "
                            f"{option}.")
    _check_writable_parent(path, option)
    return path


def claim_dir(path: str | Path, overwrite: bool = False, *, owns: tuple[str, ...], writes: tuple[str, ...] | None,
              what: str, option: str = "--out") -> Path:
    """An output folder may be a missing path, an empty folder, or a folder of this command's kind (it holds one of
    `owns`, the names that mark that kind); when the command would replace something there (one of `writes`, the
    names it writes; None: it replaces the whole folder), only with --overwrite. Never a run (only `korllama train`
    writes into a run), a folder of other files, a file, a device, a place that takes no new files: one sentence
    before any work, nothing created. `what` names the kind in sentences ("an evaluation")."""
    path = Path(path)
    kind = _what_is(path, option)
    if kind not in (None, "folder"):
        raise KorllamaError(f"{option} {path} is {_article(kind)}; it must name a folder (for {what}).")
    if kind is None:
        _check_writable_parent(path, option)
        return path
    _refuse_run(path, option)
    present = {p.name for p in path.iterdir()}
    if present and not present & set(owns):
        raise KorllamaError(f"{option} {path} is a folder of other files, not {what}; choose a new or empty "
                            f"{option} (korllama does not mix its files with others).")
    for name in writes or ():
        if (path / name).is_dir():
            raise KorllamaError(f"{option} {path}: {path / name} is a folder, so {name} cannot be written there; "
                                f"choose another {option}.")
    replaced = sorted(present if writes is None else present & set(writes))
    if replaced and not overwrite:
        shown = ", ".join(replaced[:3]) + (", ..." if len(replaced) > 3 else "")
        raise KorllamaError(f"{option} {path} already holds {what} ({shown}); pass --overwrite to replace it, or "
                            f"choose another {option}.")
    _try_write(path, path, option)
    return path


def check_place(path: str | Path, option: str = "--out") -> Path:
    """What every output folder must be, for `korllama train`, whose folder may be a run (RunDir.check_new judges
    its state): not a file or a device, not under a file or inside a run, in a place that takes new files."""
    path = Path(path)
    kind = _what_is(path, option)
    if kind not in (None, "folder"):
        raise KorllamaError(f"{option} {path} is {_article(kind)}; a run is a folder: choose another {option}.")
    if kind is None:
        _check_writable_parent(path, option)
    else:
        _try_write(path, path, option)
    return path


_KINDS = ((stat.S_ISDIR, "folder"), (stat.S_ISREG, "file"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def _what_is(path: Path, option: str) -> str | None:
    """What stands at `path` (links followed); None when nothing does (or it lies under a file: the parent's check
    names that)."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:  # a link loop, a name too long, no permission to look
        raise KorllamaError(f"{option} {path} cannot be used: {exc.strerror or exc}.") from None
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def _article(kind: str) -> str:
    return "a file" if kind == "file" else kind


def _refuse_run(folder: Path, option: str) -> None:
    from korllama.run import RunDir  # here, not at the top: `korllama --help` need not import it

    if RunDir(folder).trained_into:
        raise KorllamaError(f"{option}: {folder} is a korllama run, and only `korllama train` writes into a run; "
                            f"choose another {option}.")


def _check_writable_parent(path: Path, option: str) -> None:
    """The nearest existing folder above `path` (where the output or its folders will be made) must be a folder
    that takes new files, and not a run."""
    above = path.absolute().parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise KorllamaError(f"{option} {path} cannot be made: {above} is a file, not a folder.")
    _refuse_run(above, option)
    _try_write(above, path, option)


def _try_write(folder: Path, path: Path, option: str) -> None:
    """Tried for real (permissions, read-only mounts, /proc and /sys all answer here), and removed at once."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".korllama-check-", dir=folder)
    except OSError as exc:
        raise KorllamaError(f"{option} {path} cannot be written: {folder} takes no new files "
                            f"({exc.strerror or exc}).") from None
    os.close(fd)
    os.unlink(tmp)
