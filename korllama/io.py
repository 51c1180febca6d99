"""Writing outputs: a file appears whole or not at all (written to a temp file beside it, then renamed); JSON holds
no NaN. What an output path may be is decided in korllama.outputs, once, for every command."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

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
        if not target.name.startswith("."):  # a hidden file is korllama's bookkeeping (a manifest), not an output
            written.append(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def user_permissions(folder: str | Path) -> None:
    """Give every file in `folder` the permissions the user's umask asks for (0644 under the usual 022): some
    writers (safetensors) make their files 0600 whatever the umask, so a run shared with a group was unreadable."""
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(folder).iterdir():
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o666 & ~umask)


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


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file, read in blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
