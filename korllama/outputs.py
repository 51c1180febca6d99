"""What an output path may be, decided once for every command that writes (docs/rules.md): `claim_file`,
`claim_dir` (and `check_place` for `korllama train`, whose run folder RunDir judges) refuse, before any work and
with nothing created, a device, FIFO or socket, a file where a folder goes and the reverse, a path under a file, a
place that takes no new files, a run (only `korllama train` writes into a run), an existing output without
--overwrite, and an input file as the output.

Ownership of an output folder is korllama's own manifest (`.korllama-manifest.json`), listing every file korllama
wrote there, never a common file name: --overwrite replaces or deletes only files the manifest lists, and refuses,
naming them, when the folder holds others. What a killed command left (its hidden temporary files) is recognised
as korllama's own and removed by the next command that claims the folder. While a command of the CLI writes an
output, it holds a lock on it: a second writer of the same output gets one sentence.

An evaluation folder's own rules (its files, the one system it belongs to) are korllama.evaluation's. Light on
purpose: the CLI checks `--out` with it before any work.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path

from korllama.errors import KorllamaError
from korllama.io import write_text
from korllama.layout import RunDir


def claim_file(path: str | Path, overwrite: bool = False, option: str = "--out", inputs: tuple = ()) -> Path:
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
    for given in inputs:
        if kind == "file" and given is not None and Path(given).exists() and path.samefile(given):
            raise KorllamaError(f"{option} {path} is the input file {given}; korllama never writes over what it "
                                f"reads: choose another {option}.")
    if kind == "file" and not overwrite:
        raise KorllamaError(f"{option} {path} already exists; pass --overwrite to replace it, or choose another "
                            f"{option}.")
    _check_writable_parent(path, option)
    hold(path, option)
    return path


def claim_dir(path: str | Path, overwrite: bool = False, *, owns: tuple[str, ...], writes: tuple[str, ...] | None,
              what: str, option: str = "--out", folders: tuple[str, ...] = ()) -> Path:
    """An output folder may be a missing path, an empty folder, or a folder of this command's kind (it holds one of
    `owns`, the names that mark that kind); when the command would replace something there (one of `writes`, the
    names it writes; None: it replaces the whole folder), only with --overwrite. Never a run (only `korllama train`
    writes into a run), a folder of other files, a file, a device, a place that takes no new files: one sentence
    before any work, nothing created. `what` names the kind in sentences ("an evaluation")."""
    path = Path(path)
    if not _folder_at(path, option, f"it must name a folder (for {what})."):
        hold(path, option)
        return path
    _refuse_run(path, option)
    hold(path, option)  # before the leftovers go: a live writer's temporary files are not leftovers
    present = _entries(path, clean=(*owns, *(writes or ()), *owned(path)))
    if present and not present & set(owns):
        raise KorllamaError(f"{option} {path} is a folder of other files, not {what}; choose a new or empty "
                            f"{option} (korllama does not mix its files with others).")
    for name in writes or ():
        if name not in folders and (path / name).is_dir():  # `folders`: names the command writes as folders
            raise KorllamaError(f"{option} {path}: {path / name} is a folder, so {name} cannot be written there; "
                                f"choose another {option}.")
    replaced = sorted(present if writes is None else present & set(writes))
    if replaced and not overwrite:
        shown = ", ".join(replaced[:3]) + (", ..." if len(replaced) > 3 else "")
        raise KorllamaError(f"{option} {path} already holds {what} ({shown}); pass --overwrite to replace it, or "
                            f"choose another {option}.")
    if replaced:
        mine = owned(path)
        checked = files_under(path) if writes is None else \
            [f for name in replaced for f in ([f"{name}/{g}" for g in files_under(path / name)] if name in folders
                                              else [name])]  # a folder of korllama's: each file in it
        theirs = [f for f in checked if f not in mine]
        if theirs:
            shown = ", ".join(theirs[:3]) + (", ..." if len(theirs) > 3 else "")
            raise KorllamaError(f"{option} {path} holds files korllama did not write ({shown}: not in its "
                                f"{MANIFEST}), and --overwrite replaces only korllama's own files; move them, or "
                                f"choose another {option}.")
    _try_write(path, path, option)
    return path


def check_place(path: str | Path, option: str = "--out") -> Path:
    """What every output folder must be, for `korllama train`, whose folder may be a run (RunDir.check_new judges
    its state): not a file or a device, not under a file or inside a run, in a place that takes new files."""
    path = Path(path)
    if _folder_at(path, option, f"a run is a folder: choose another {option}."):
        _try_write(path, path, option)
    hold(path, option)
    return path


def _folder_at(path: Path, option: str, needs: str) -> bool:
    """True when a folder stands at `path`; nothing there: its parent must take new files (False); anything else
    (a file, a device, a FIFO) is refused with `needs`, what the command needs instead."""
    kind = _what_is(path, option)
    if kind not in (None, "folder"):
        raise KorllamaError(f"{option} {path} is {_article(kind)}; {needs}")
    if kind is None:
        _check_writable_parent(path, option)
    return kind == "folder"


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


# --- what korllama wrote in a folder, and what a killed command left ----------------------------------------------

MANIFEST = ".korllama-manifest.json"
# korllama's own temporary names: io.atomic_path's ".NAME.XXXX.tmp", the write probe, the lock files
LEFTOVER = re.compile(r"^\.(korllama-check-.+|korllama-lock-.+|.+\.tmp)$")


def _entries(folder: Path, clean: tuple[str, ...] = ()) -> set[str]:
    """The names in `folder` but korllama's bookkeeping (the manifest) and hidden temporary files; the temporary
    files a killed korllama command left for one of the names `clean` (io.atomic_path's '.NAME.XXXXXXXX.tmp') are
    removed. Any other hidden file is left alone: it may be the user's."""
    ours = re.compile(rf"^\.({'|'.join(map(re.escape, clean))})\.[a-z0-9_]{{8}}\.tmp$") if clean else None
    names = set()
    for entry in folder.iterdir():
        if entry.name == MANIFEST:
            continue
        if LEFTOVER.match(entry.name):
            if ours is not None and ours.match(entry.name) and entry.is_file():
                entry.unlink(missing_ok=True)
            continue
        names.add(entry.name)
    return names


def files_under(folder: Path) -> list[str]:
    """Every file under `folder` (relative, '/'-separated), but the manifest and korllama's leftovers."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.name != MANIFEST and not LEFTOVER.match(p.name))


def owned(folder: str | Path) -> set[str]:
    """The files korllama recorded writing in `folder` (empty when it has no readable manifest)."""
    try:
        found = json.loads((Path(folder) / MANIFEST).read_text("utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {f for f in found if isinstance(f, str)}


def record_written(folder: str | Path, names: list[str] | tuple[str, ...] | None = None) -> None:
    """Add to `folder`'s manifest the files just written there: `names` (those that exist), or every file under it
    (a folder korllama wrote whole: an export, a demo)."""
    folder = Path(folder)
    found = files_under(folder) if names is None else [n for n in names if (folder / n).is_file()]
    kept = {f for f in owned(folder) if (folder / f).exists()}
    write_text(folder / MANIFEST, json.dumps({"written_by": "korllama", "files": sorted(kept | set(found))},
                                             indent=1))


# --- one writer at a time -------------------------------------------------------------------------------------------

locking = {"on": False}  # the CLI's main() turns it on for one command; a library caller takes no locks
_held: dict[str, tuple[int, Path]] = {}


def hold(path: Path, option: str = "--out") -> None:
    """Lock `path` for this command (until release_all): a second korllama command writing the same output is
    refused in one sentence instead of both writing it. The lock file is hidden in the nearest existing folder
    above; under accelerate only the main process (RANK 0) locks."""
    if not locking["on"] or os.environ.get("RANK", "0") != "0":
        return
    key = str(Path(path).absolute())
    if key in _held:
        return
    above = Path(key).parent
    while not above.is_dir():
        above = above.parent
    lock = above / f".korllama-lock-{hashlib.sha1(key.encode()).hexdigest()[:16]}"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return  # a place that takes no new files: _try_write says so
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise KorllamaError(f"{option} {path} is being written by another korllama command right now; wait for it "
                            f"to finish, or choose another {option}.") from None
    _held[key] = (fd, lock)


def release_all() -> None:
    """The end of a command: its locks go, and their files with them."""
    for fd, lock in _held.values():
        try:
            lock.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(fd)
    _held.clear()

