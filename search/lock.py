"""One driver per results folder: a second run_search.py on the same STORAGE/NAME (a
search, a `--resume`, a `--retrain`) is refused with one line naming the holder.

Local folders: an exclusive `flock` on STORAGE/NAME itself and on STORAGE/NAME/.lock (which
names the holder), held for the driver's life; the kernel drops them when the process
dies, so a killed driver's lock never blocks `--resume`. The folder's own lock holds when
someone deletes .lock by hand (a second driver got in so, and wrote into a running
search); where the file system cannot lock a folder (NFS), .lock alone.
URIs (s3://...): a lease object STORAGE/NAME/.lease that the holder rewrites every
HEARTBEAT_S seconds; one older than LEASE_S, or whose holder is a process of this host
that is gone (killed), is stale and taken over. On S3 and the stores that do conditional
writes, creating and taking over the lease are compare-and-swaps (`If-None-Match: *`,
`If-Match: ETAG`, search/objstore.py): of two drivers starting at once exactly one wins.
Elsewhere (no boto3, or a store that refuses conditional requests) it falls back to
write, wait, read back, where two drivers starting within the same half second can both
win; it says so when it starts, and docs/reliability.md too.

The lease is released on every way out (a normal end, an error, SIGINT/SIGTERM, a signal
while it is taken or released): it is deleted when it holds this driver's token, whatever
its ETag. Its name does not end in .json: on `--resume` Tune copies the folder's top-level
*.json and *.pkl files to a local folder and uploads that folder again every few seconds,
which once put back a stale copy of `.lease.json` (a new ETag, so the conditional delete at
the end failed and the lease stayed; a frozen heartbeat, so another host could take a
running search over). Both spellings of one folder (`s3://b/./p`, `s3://b/p`) give one key:
the key comes from the URI's one spelling (ucrn.fileio.normalize_uri); a local folder's lock
is on its real path (links resolved by ResultsStore), and flock is on the inode anyway.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import threading
import time
import uuid
from typing import Any

from search.objstore import ConditionalObject, Unsupported
from ucrn.errors import UsageError, signals_held
from ucrn.fileio import answered, display_uri
from ucrn.locks import Held, take_flock, take_folder_flock

LOCK_FILE, LEASE_FILE = ".lock", ".lease"
# Written by the holder when SIGINT/SIGTERM stops its run: the run's Tune callback (which
# Tune pickles and restores, so it cannot hold an in-process event) reads it there.
INTERRUPTED = ".interrupted"
# Set when this process's lease was taken over: from then on it records nothing more in the
# folder (its run's callback and the interrupted mark check it), which is another's now.
LEASE_LOST = threading.Event()


def lease_lost() -> bool:
    """LEASE_LOST as a function: Tune pickles the run's callback, and an Event cannot be."""
    return LEASE_LOST.is_set()
HEARTBEAT_S, LEASE_S = 10.0, 60.0


def _holder(purpose: str) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "purpose": purpose,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "token": uuid.uuid4().hex,
            "heartbeat": time.time()}


def _describe(h: dict[str, Any]) -> str:
    return (f"pid {h.get('pid', '?')} on {h.get('host', '?')} ({h.get('purpose', 'a driver')}, "
            f"since {h.get('since', '?')})")


class ResultsLock:
    """`with ResultsLock(store, "search"):` holds STORAGE/NAME for this process."""

    def __init__(self, store: Any, purpose: str):
        self.store, self.purpose = store, purpose
        self.where = store.root if store.is_local else display_uri(store.uri)
        self._token: str | None = None  # of the lease being taken: found again if cut off
        self._fd: int | None = None
        self._folder_fd: int | None = None  # the folder's own flock (search/lock.py doc)
        self._lease: dict[str, Any] | None = None
        self._cond: ConditionalObject | None = None
        self._etag: str | None = None
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()
        self._made: list[str] = []  # folders made to hold the lock, deepest first

    def __enter__(self) -> ResultsLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the folder; anything that stops this half way (an error, SIGINT/SIGTERM
        between writing the lease and returning) gives back what was taken."""
        try:
            if self.store.is_local:
                self._acquire_local()
            else:
                self._acquire_lease()
            self._clear_mark()
        except BaseException:
            self.release()
            raise

    def mark_interrupted(self) -> None:
        if LEASE_LOST.is_set():  # the folder is another driver's now: write nothing there
            return
        self.store.write_bytes(INTERRUPTED, b"")

    def _clear_mark(self) -> None:
        def clear() -> None:
            if self.store.exists(INTERRUPTED):
                self.store.delete(INTERRUPTED)

        try:  # bounded: a store that stopped answering must not hold the release
            answered(clear)
        except (OSError, ValueError):  # NoAnswer; pyarrow's ArrowInvalid is a ValueError
            pass

    def _acquire_local(self) -> None:
        root = self.store.root
        self._made = _missing(root)  # what a refused or failed run removes again
        os.makedirs(root, exist_ok=True)
        path = os.path.join(root, LOCK_FILE)
        try:
            self._folder_fd = take_folder_flock(root)
            self._fd = take_flock(path, json.dumps(_holder(self.purpose)).encode())
        except Held as held:
            self._drop_folder_lock()
            self._cleanup_folder()
            text = held.args[0] or _read_holder(path)
            who = (_describe(_parse_holder(text)) if text else
                   "its lock file .lock was deleted by hand while it runs")
            raise UsageError(f"{self.where} is in use by another driver: {who}; wait for it "
                             f"to end or stop it") from None
        except OSError as e:
            self._drop_folder_lock()
            self._cleanup_folder()
            raise UsageError(f"{self.where}: could not take the lock {path} ({e.strerror})") \
                from None

    def _drop_folder_lock(self) -> None:
        if self._folder_fd is not None:
            os.close(self._folder_fd)
            self._folder_fd = None

    def _refuse_if_held(self, current: Any) -> None:
        if isinstance(current, dict) and not _stale(current):
            raise UsageError(f"{self.where} is in use by another driver: "
                             f"{_describe(current)}; its lease expires {LEASE_S:.0f} s after "
                             f"its last heartbeat")

    def _acquire_lease(self) -> None:
        try:
            self._cond = ConditionalObject(self.store.uri, self.store.path(LEASE_FILE))
            self._acquire_conditional()
        except Unsupported as e:
            self._cond = None
            print(f"note: {self.where}: no conditional writes ({e}); the one-driver lease "
                  f"falls back to write and read back", flush=True)
            self._acquire_read_back()
        self._beat = threading.Thread(target=self._heartbeat, name="results-lease", daemon=True)
        self._beat.start()

    def _acquire_conditional(self) -> None:
        assert self._cond is not None
        current, etag = self._cond.read()
        self._refuse_if_held(current)
        lease = _holder(self.purpose)
        self._token = lease["token"]
        new = (self._cond.put(lease, if_absent=True) if etag is None
               else self._cond.put(lease, if_etag=etag))
        if new is None:  # someone else created or took it over since we read it
            now, _ = self._cond.read()
            raise UsageError(f"{self.where}: another driver took it at the same moment: "
                             f"{_describe(now or {})}")
        self._lease, self._etag = lease, new

    def _acquire_read_back(self) -> None:
        current = self.store.read_json(LEASE_FILE, missing_ok=True)
        self._refuse_if_held(current)
        self._lease = _holder(self.purpose)
        self._token = self._lease["token"]
        self.store.write_json(LEASE_FILE, self._lease)
        time.sleep(0.5)  # a rival writing at the same moment: the last writer wins, the other sees it
        now = self.store.read_json(LEASE_FILE, missing_ok=True)
        if not isinstance(now, dict) or now.get("token") != self._lease["token"]:
            self._lease = None
            raise UsageError(f"{self.where}: another driver took it at the same moment: "
                             f"{_describe(now if isinstance(now, dict) else {})}")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._lease = {**(self._lease or {}), "heartbeat": time.time()}
                if self._cond is None:
                    self.store.write_json(LEASE_FILE, self._lease)
                    continue
                etag = self._cond.put(self._lease, if_etag=self._etag)
                if etag is None and self._stop.is_set():  # released meanwhile: ours, gone
                    return
                if etag is None:  # a retried PUT whose first try went through, or a copy
                    current, now = self._cond.read()  # of the lease written back: still
                    if self._ours(current):  # ours by its token; renewed on that ETag
                        etag = self._cond.put(self._lease, if_etag=now) or now
                if etag is None:  # taken over (or deleted) behind this driver's back
                    LEASE_LOST.set()
                    print(f"error: {self.where}: this driver's lease was taken over or "
                          f"deleted by someone else; stopping, so that two drivers never "
                          f"write one folder (the other one's run goes on)", flush=True)
                    self._lease = self._etag = self._token = None  # not ours to delete
                    os.kill(os.getpid(), signal.SIGTERM)  # the run's clean stop
                    return
                self._etag = etag
            except Exception:  # noqa: BLE001 - the search's own writes will report the store
                pass

    def _ours(self, lease: Any) -> bool:
        return isinstance(lease, dict) and self._token is not None and lease.get(
            "token") == self._token

    def release(self) -> None:
        """Give the folder back. SIGINT/SIGTERM wait for the end of it (a second Ctrl-C
        would cut the delete short and leave the lease behind)."""
        with signals_held():
            self._release()

    def _release(self) -> None:
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=60)  # a renewal in flight must not race the delete
        if self._fd is not None or self._lease is not None:
            self._clear_mark()
        if self._fd is not None:
            try:
                os.unlink(os.path.join(self.store.root, LOCK_FILE))
            except FileNotFoundError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None
            self._drop_folder_lock()
            self._cleanup_folder()
        if self._token is not None:
            try:
                self._delete_lease()
            except Exception:  # noqa: BLE001 - a store that is down: the lease expires
                pass
        self._lease = self._etag = self._token = None

    def _delete_lease(self) -> None:
        """Delete the lease if it is this driver's: by the ETag last written, else (written
        back by someone, renewed meanwhile, or a take cut off before its ETag was known) by
        its token, on the ETag read now; never a successor's."""
        if self._cond is None:
            if self._ours(answered(lambda: self.store.read_json(LEASE_FILE, missing_ok=True))):
                answered(lambda: self.store.delete(LEASE_FILE))
            return
        try:
            if self._etag is not None and self._cond.delete(self._etag):
                return
            current, etag = self._cond.read()
            if self._ours(current) and etag is not None:
                self._cond.delete(etag)
        except Unsupported:  # conditional deletes refused: read, compare, delete
            current, _ = self._cond.read()
            if self._ours(current):
                self._cond.client.delete_object(Bucket=self._cond.bucket, Key=self._cond.key)

    def _cleanup_folder(self) -> None:
        """Folders made only to hold the lock (STORAGE/NAME, and STORAGE where it was new)
        are removed again while empty: a refused or failed run leaves nothing behind."""
        for folder in self._made:
            try:
                os.rmdir(folder)
            except OSError:
                break
        self._made = []


def _stale(holder: dict[str, Any]) -> bool:
    """No heartbeat for LEASE_S (or one in the future, or none readable), or a holder on
    this host whose process is gone."""
    try:
        age = time.time() - float(holder.get("heartbeat", 0))
    except (TypeError, ValueError):
        return True
    if not math.isfinite(age) or age >= LEASE_S or age < -LEASE_S:
        return True
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except (ProcessLookupError, OverflowError, ValueError):
            return True
        except OSError:
            pass
    return False


def _parse_holder(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text or "{}")
        return data if isinstance(data, dict) else {}
    except ValueError:
        return {}


def _read_holder(path: str) -> str:
    """The holder a lock file names; "" when it is gone or unreadable."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4096).decode(errors="replace")
    except OSError:
        return ""


def _missing(path: str) -> list[str]:
    """The folders `os.makedirs(path)` would make, deepest first."""
    out = []
    while not os.path.exists(path) and os.path.dirname(path) != path:
        out.append(path)
        path = os.path.dirname(path)
    return out
