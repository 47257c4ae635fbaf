"""Write outputs so that a failed or interrupted run leaves nothing behind.

Everything is written to a hidden temporary file beside the target (same file
system, so the final rename is atomic) and renamed into place only on success.
"""
import contextlib
import os
import tempfile
from pathlib import Path

from convkit.errors import ConvkitError


def _refuse_inputs(target: Path, inputs) -> None:
    for src in inputs:
        src = Path(src)
        if src.exists() and target.exists() and os.path.samefile(src, target):
            raise ConvkitError(f"{target}: output path is one of the inputs; choose another -o")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target, *, inputs=()):
    """Yield a temporary path beside `target`; rename it onto `target` when the block succeeds."""
    target = Path(target)
    _refuse_inputs(target, inputs)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ConvkitError(f"{target}: directory {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=parent)
    # mkstemp makes the file private; the output gets the mode a plain open() would give it
    os.fchmod(fd, 0o666 & ~_current_umask())
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(target, mode="w", *, inputs=(), **kwargs):
    """Open a temporary file beside `target` for writing; it becomes `target` only on success."""
    with atomic_path(target, inputs=inputs) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f
