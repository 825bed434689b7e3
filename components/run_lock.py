"""One run per checkout at a time: an ``flock`` on ``<project>/.simclr-run.lock``.

The flow (``python -m flows`` and the flow function itself) and every ``simclr <stage>`` take the
lock. A second run refuses at once (or waits up to ``wait_s``) with one line naming the holder
(pid, command, start time). The kernel releases an ``flock`` when its holder dies, however it
dies, so a lock left by a killed run is simply taken over; the file's text is only a label.

The processes a holder starts (``dvc repro`` -> ``simclr <stage>``) run under the holder's lock:
the holder passes :meth:`RunLock.child_env` to them, and a ``run_lock`` call that finds the lock
held by the process named in ``$SIMCLR_RUN_LOCK`` goes ahead without taking it. Within one
process the lock is re-entrant.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from components.errors import PipelineError

log = logging.getLogger(__name__)

LOCK_FILE = ".simclr-run.lock"
TOKEN_ENV = "SIMCLR_RUN_LOCK"  # "<holder pid>:<lock path>", set for the holder's child processes
POLL_S = 0.5

_held: dict[Path, int] = {}  # lock files this process holds -> nesting depth


class RunLocked(PipelineError):
    """Another run holds this checkout's run lock."""


@dataclass(frozen=True)
class RunLock:
    path: Path
    pid: int  # the holder: this process, or the ancestor whose lock it inherited

    @property
    def token(self) -> str:
        return f"{self.pid}:{self.path}"

    def child_env(self) -> dict[str, str]:
        """Environment entries that let this run's child processes run under its lock."""
        return {TOKEN_ENV: self.token}


def lock_path(project: str | Path) -> Path:
    return Path(project).resolve() / LOCK_FILE


def read_holder(path: Path) -> dict:
    """What the holder wrote into the lock file (``{}`` if unreadable or not yet written)."""
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def describe(holder: dict) -> str:
    if not holder:
        return "a process that has not written its details yet"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
            f"({holder.get('command', '?')}), started {holder.get('started', '?')}")


@contextmanager
def run_lock(project: str | Path, command: str, wait_s: float = 0.0) -> Iterator[RunLock]:
    """Hold the checkout's run lock for the ``with`` block (see the module docstring).

    Raises :class:`RunLocked` (a :class:`PipelineError`: one ``error:`` line, exit 2) when another
    run still holds it after ``wait_s`` seconds.
    """
    path = lock_path(project)
    if path in _held:  # re-entrant within this process
        _held[path] += 1
        try:
            yield RunLock(path, os.getpid())
        finally:
            _held[path] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = read_holder(path)
                if not holder:  # it may be between taking the lock and writing its details
                    time.sleep(0.05)
                    holder = read_holder(path)
                if holder and os.environ.get(TOKEN_ENV) == f"{holder.get('pid')}:{path}":
                    os.close(fd)
                    fd = -1
                    yield RunLock(path, int(holder["pid"]))  # our ancestor's run: go ahead
                    return
                if time.monotonic() >= deadline:
                    raise RunLocked(
                        f"another run holds {path}: {describe(holder)}; wait for it to finish "
                        f"or stop it") from None
                time.sleep(POLL_S)
        previous = read_holder(path)
        if previous:
            log.info("run lock %s: taking over from %s (process gone)", path, describe(previous))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                  "started": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        _held[path] = 1
        try:
            yield RunLock(path, os.getpid())
        finally:
            del _held[path]
            os.ftruncate(fd, 0)  # released: an empty label
    finally:
        if fd >= 0:
            os.close(fd)  # closing the descriptor releases the flock


__all__ = ["LOCK_FILE", "TOKEN_ENV", "RunLock", "RunLocked", "lock_path", "read_holder", "run_lock"]
