"""Stopping a run stops all of its work: signals become exceptions, and no process outlives the run.

* :func:`signals_raise` turns SIGTERM (and SIGINT) into :class:`Terminated`, so ``finally`` blocks
  run (MLflow runs are marked FAILED, Ray is shut down, child process groups are stopped)
  instead of the process vanishing mid-write.
* :func:`stop_process_tree` stops a child and everything it started (its process group and
  its descendants): SIGTERM, a grace period, then SIGKILL.
* :func:`start_reaper` covers the case no handler can: the run's process is SIGKILLed. Every
  process the run starts inherits ``$SIMCLR_RUN_MARKER``; a small watchdog process, started
  first, waits for the run's process to end (a pipe it holds closes, however it ends) and then
  stops every process that still carries the marker (the Prefect API server, ``dvc``, the stage,
  the Ray instance), wherever it was reparented to.

Linux only (``/proc``), like the rest of the pipeline's process handling.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

MARKER_ENV = "SIMCLR_RUN_MARKER"
GRACE_S = 5.0


class Terminated(SystemExit):
    """The process received SIGTERM/SIGINT; exits with status ``128 + signal``."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(128 + signum)

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"


@contextlib.contextmanager
def signals_raise(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Within the block, the given signals raise :class:`Terminated` in the main thread
    (outside the main thread, where Python cannot install handlers, this does nothing)."""
    def handler(signum: int, frame: object) -> None:
        raise Terminated(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def stop_process_tree(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """Stop ``proc`` and every process it started; reap ``proc``.

    First SIGTERM only the chain of single children from ``proc`` down to the first process
    with several (``dvc`` -> ``sh`` -> ``simclr <stage>``), so the stage can end its MLflow run
    and shut its Ray instance down while Ray is still alive; then SIGTERM whatever is left of
    the tree (its process group and all descendants, whichever group they moved to); SIGKILL
    what survives ``grace_s`` after each step.
    """
    children = _children_map()
    tree = {proc.pid, *descendants(proc.pid, children), *_group_members(proc.pid)}
    lead = [proc.pid]
    while len(children.get(lead[-1], [])) == 1:
        lead.append(children[lead[-1]][0])
    _signal_and_wait(proc, set(lead), signal.SIGTERM, grace_s)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        tree = {pid for pid in tree | set(descendants(proc.pid)) if _alive(pid)}
        if not tree:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signum)
        _signal_and_wait(proc, tree, signum, grace_s)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)


def _signal_and_wait(proc: subprocess.Popen, pids: set[int], signum: int, wait_s: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, so it does not linger as a zombie
        if not any(_alive(pid) for pid in pids):
            return
        time.sleep(0.1)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid in _pids():
        fields = _stat_fields(pid)
        if fields and not _zombie(pid):
            children.setdefault(int(fields[1]), []).append(pid)
    return children


def descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """Every live process below ``pid`` in the parent tree."""
    children = _children_map() if children is None else children
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def _group_members(pgid: int) -> list[int]:
    return [pid for pid in _pids() if _pgid(pid) == pgid]


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and not _zombie(pid)


# ----------------------------------------------------------------------------- reaper
def start_reaper(grace_s: float = GRACE_S) -> str:
    """Start the watchdog for this process; set and return the marker its children inherit.

    Call it before starting any child process (it sets ``$SIMCLR_RUN_MARKER`` in
    ``os.environ``). The watchdog runs in its own session, so a Ctrl-C at the terminal reaches
    this process (which handles it) but not the watchdog.
    """
    marker = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    read_end, write_end = os.pipe()  # the write end stays here, not inherited by children
    env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
    subprocess.Popen([sys.executable, "-m", "components.process_guard", marker, str(grace_s)],
                     stdin=read_end, env=env, start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(read_end)
    _keep_open.append(write_end)
    os.environ[MARKER_ENV] = marker
    return marker


_keep_open: list[int] = []  # the reaper's pipe: closed by the kernel when this process ends


def marked_pids(marker: str) -> list[int]:
    """Live processes whose environment carries ``MARKER_ENV=marker`` (not this one)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and not _zombie(pid):
            found.append(pid)
    return found


def reap(marker: str, grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM every marked process and its descendants (Ray's agents drop the marker from
    their environment), SIGKILL what is left after ``grace_s``; returns the pids signalled."""
    signalled: set[int] = set()
    targets: set[int] = set()
    for signum in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + grace_s
        while True:  # processes may start others while being stopped: scan again
            marked = marked_pids(marker)
            targets = {pid for pid in targets if _alive(pid)} | set(marked)
            targets |= {child for pid in marked for child in descendants(pid)}
            targets.discard(os.getpid())
            if not targets or time.monotonic() >= deadline:
                break
            for pid in targets:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)
                signalled.add(pid)
            time.sleep(0.2)
        if not targets:
            break
    return sorted(signalled)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat_fields(pid: int) -> list[str]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text[text.rindex(")") + 2:].split()  # after "pid (comm) "


def _zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return not fields or fields[0] in ("Z", "X")


def _pgid(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[2]) if fields else -1


def _reaper_main(marker: str, grace_s: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        sys.stdin.buffer.read()  # EOF: the run's process has ended
    reap(marker, grace_s)


if __name__ == "__main__":
    _reaper_main(sys.argv[1], float(sys.argv[2]))
