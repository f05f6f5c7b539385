"""Crash-safe file writes: a reader sees the old file or the complete new one, never a partial one.

Every output that a later run reads back (checkpoints, ``last_checkpoint``, evaluation results,
prediction files, prepared dataset annotations) goes through :func:`atomic_write`: the content is
written to a hidden temporary file in the destination folder, flushed to disk, and renamed over the
final name (``os.replace`` is atomic on POSIX and Windows file systems). A process killed during the
write leaves at most a ``.<name>.<random>.tmp`` file behind, which :func:`remove_stale_temporaries`
cleans up.
"""
import contextlib
import glob
import os
import tempfile
from typing import IO, Iterator

__all__ = ["atomic_write", "append_line", "remove_stale_temporaries"]

_TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open ``path`` for writing so that it only appears, complete, when the block succeeds.

    Args:
        path: the final file name; its folder is created if needed.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        open_kwargs: passed to :func:`open` (e.g. ``encoding``).

    Yields:
        A file object on a temporary file beside ``path``. On a normal exit it is flushed, synced
        and renamed to ``path`` (replacing an existing file); on an exception it is deleted and
        ``path`` is left as it was.

    Raises:
        ValueError: ``mode`` is not a write mode.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=_TMP_SUFFIX, dir=directory)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise


def append_line(path: str, line: str) -> None:
    """Append ``line`` and a newline to ``path`` with one ``write`` system call.

    A single write to a local file is not split by a signal, so a process killed at any moment
    leaves only whole lines (used for ``metrics.json``, one JSON record per line).
    """
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"Short write to {path}: {written} of {len(data)} bytes")
    finally:
        os.close(fd)


def remove_stale_temporaries(path: str) -> int:
    """Delete temporary files left by an :func:`atomic_write` of ``path`` that was killed.

    Returns:
        The number of files removed.
    """
    directory, name = os.path.split(os.path.abspath(path))
    stale = glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}.*{_TMP_SUFFIX}"))
    for file in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(file)
    return len(stale)
