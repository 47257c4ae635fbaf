"""Write outputs so that a failed or interrupted run leaves nothing behind.

Everything is written to a hidden temporary file beside the target (same file
system, so the final rename is atomic) and renamed into place only on success. An
exception, Ctrl-C or SIGTERM removes the temporary file; one left by SIGKILL is named
after its target and writer (`.NAME.PID.convkit-part`) and removed by the next run.
"""
import contextlib
import os
import signal
import threading
from pathlib import Path

from convkit.errors import ConvkitError


def _refuse_inputs(target: Path, inputs) -> None:
    for src in inputs:
        src = Path(src)
        if src.exists() and target.exists() and os.path.samefile(src, target):
            raise ConvkitError(f"{target}: output path is one of the inputs; choose another -o")


PART_SUFFIX = ".convkit-part"


def part_name(target: Path, pid: int | None = None) -> Path:
    """The temporary file of `target` while process `pid` writes it: hidden, beside the
    target, and recognisable (`.NAME.PID.convkit-part`), so that one left by a killed run
    is never taken for output and the next run on the same target can remove it."""
    return target.parent / f".{target.name}.{os.getpid() if pid is None else pid}{PART_SUFFIX}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_parts(target: Path) -> None:
    """Delete temporaries of `target` whose writer is gone (SIGKILL, power loss)."""
    prefix = f".{target.name}."
    for part in target.parent.glob(f".*{PART_SUFFIX}"):
        pid = part.name[len(prefix):-len(PART_SUFFIX)]
        if part.name.startswith(prefix) and pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            part.unlink(missing_ok=True)


@contextlib.contextmanager
def _terminate_as_exit():
    """While the block runs, SIGTERM (and SIGHUP) unwind like an exception, so the cleanup
    below removes the temporary file; the previous handlers come back afterwards."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def atomic_path(target, *, inputs=()):
    """Yield a temporary path beside `target`; rename it onto `target` when the block succeeds."""
    target = Path(target)
    _refuse_inputs(target, inputs)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ConvkitError(f"{target}: directory {parent} does not exist")
    target = parent / target.name
    remove_stale_parts(target)
    tmp = part_name(target)
    with _terminate_as_exit():
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode: the umask applies
            os.close(fd)
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
