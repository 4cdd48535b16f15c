"""Advisory locks (flock) that the kernel drops when their holder dies: one driver per
results folder (search/lock.py), one study at a time (benchmarks/search_efficiency.py)."""

from __future__ import annotations

import errno
import os


class Held(Exception):
    """`take_flock`: another process holds the lock; `args[0]` is what it wrote there."""


def take_folder_flock(path: str | os.PathLike) -> int | None:
    """An exclusive, non-blocking `flock` on the folder itself; its descriptor, or None
    where the file system cannot lock a folder (NFS locks need a file open for writing).
    A lock on a file inside the folder alone is gone once someone deletes that file by
    hand (a "stale lock" cleaned up): a second driver then took a new one and wrote into
    the running search. Raises Held ("") while another holds it."""
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Held("") from None
    except OSError:  # EBADF, ENOLCK, EOPNOTSUPP: the file lock alone
        os.close(fd)
        return None
    return fd


def take_flock(path: str | os.PathLike, holder: bytes) -> int:
    """An exclusive, non-blocking `flock` on `path`, with `holder` written in it; the
    descriptor is returned and closing it drops the lock (as the kernel does when the
    process dies, so a killed holder never blocks the next). Raises Held with the holder's
    text. A file unlinked by its holder between open and lock is opened again."""
    import fcntl

    for _ in range(5):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 4096, 0)
            os.close(fd)
            raise Held(text.decode(errors="replace")) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder, 0)
            except OSError:  # a full disk: the lock is not left held by a lost descriptor
                os.close(fd)
                raise
            return fd
        os.close(fd)
    raise OSError(errno.EAGAIN, "the lock file keeps being replaced", str(path))
