"""File locks: one builder of a cache entry at a time, one writer of a run directory.

Both use ``fcntl.flock`` on a lock file, which the kernel releases when the holding process
dies (also on ``kill -9``), so a crashed process never leaves a lock that blocks forever.
Lock files are never deleted while in use (deleting one would let a third process lock a new
file of the same name while a second still waits on the old one).

:class:`RunDirLock` also writes who holds it (pid, host, start time, command line) into the
lock file, for the message a second run gets, and tells a lock left by a dead process (stale:
the file says pid P, nobody holds it) from one in use.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:  # POSIX; elsewhere the locks are no-ops and only atomic renames protect the files
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block; waits
    while another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunDirLockedError(RuntimeError):
    """The run directory is in use by another process, or holds a lock that needs --resume."""


class RunDirLock:
    """``RUN/.lock``: at most one training process writes a run directory.

    :meth:`acquire` takes the lock without waiting. If another live process holds it, it
    raises :class:`RunDirLockedError` naming that process. A lock file left by a process that
    died (``kill -9``, a crash, a reboot) is *stale*: nobody holds the lock, and where the host
    is this one, the pid it names is gone. A stale lock is taken over only when
    ``take_over_stale`` is set (the trainer sets it for ``--resume``, and where the dead run left
    no checkpoint), and then reported by :attr:`taken_over`; otherwise it is refused, so that
    nobody starts a new run over a killed one's checkpoints by accident. :meth:`release` (or
    leaving the ``with`` block) removes the file.
    """

    NAME = ".lock"

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / self.NAME
        self._file: Any = None
        self._created: list[Path] = []  # folders acquire made (removed again if left empty)
        self.taken_over: dict[str, Any] | None = None
        """The holder recorded in a stale lock this process took over, else None."""

    @staticmethod
    def describe(holder: dict[str, Any]) -> str:
        return (
            f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"(started {holder.get('started', '?')})"
        )

    def _recorded_holder(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text()
        except OSError:
            return None
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            return {} if text.strip() else None
        return holder if isinstance(holder, dict) else {}

    def acquire(self, *, take_over_stale: bool) -> None:
        """Take the lock, or raise :class:`RunDirLockedError` saying who holds it and what to
        do."""
        folder = self.path.parent
        self._created = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        try:
            f = self._lock_file()
        except RunDirLockedError:
            self._created = []
            raise
        holder = self._recorded_holder()
        if holder is not None and holder.get("pid") != os.getpid():
            here = holder.get("host") == socket.gethostname()
            pid = holder.get("pid")
            if fcntl is None and here and isinstance(pid, int) and _pid_alive(pid):
                f.close()  # no flock to ask: a live pid on this host is taken as the holder
                self._created = []
                raise RunDirLockedError(f"{self.path.parent} is in use by {self.describe(holder)}")
            if not take_over_stale:
                f.close()
                self._created = []
                where = "" if here else " (on another host: check that it is not running there)"
                raise RunDirLockedError(
                    f"{self.path.parent} holds a stale lock from {self.describe(holder)}, a run "
                    f"that did not finish{where}. Pass --resume to take it over and continue "
                    "that run, or set out_dir=... to start a new one."
                )
            self.taken_over = holder
        f.seek(0)
        f.truncate()
        json.dump(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "argv": sys.argv,
            },
            f,
        )
        f.flush()
        self._file = f

    def _lock_file(self) -> Any:
        """The lock file, open and flocked; raises :class:`RunDirLockedError` when held."""
        while True:
            f = open(self.path, "a+")  # noqa: SIM115 - held open for as long as the lock
            if fcntl is None:
                return f
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                holder = self._recorded_holder() or {}
                raise RunDirLockedError(
                    f"{self.path.parent} is in use by another run: {self.describe(holder)} "
                    f"holds {self.path}. Wait for it to finish, stop it, or set out_dir=... "
                    "to start a separate run."
                ) from None
            try:  # the holder may have removed the file between our open and flock
                if os.fstat(f.fileno()).st_ino == os.stat(self.path).st_ino:
                    return f
            except FileNotFoundError:
                pass
            f.close()

    def release(self) -> None:
        """Remove the lock file and let go of the lock (nothing if not held); folders that
        :meth:`acquire` made and nothing else filled are removed too (a run refused during its
        set-up leaves nothing behind)."""
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._file.close()  # closing releases the flock
        self._file = None
        for folder in self._created:  # deepest first; stops at the first one in use
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
