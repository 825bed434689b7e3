"""The checkout's run lock between real processes: refuse naming the holder, take over, inherit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.run_lock import LOCK_FILE, TOKEN_ENV, RunLocked, read_holder, run_lock

ROOT = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from components.run_lock import run_lock
with run_lock(sys.argv[1], "holder test"):
    print("held", flush=True)
    time.sleep(600)
"""


def start_holder(project: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(project)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def simclr(project: Path, *args: str, env: dict[str, str] | None = None):
    """``simclr`` in ``project``: the project's params, no data (a stage fails after the lock)."""
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    return subprocess.run([str(Path(sys.executable).parent / "simclr"), *args], cwd=project,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def holder(tmp_path):
    proc = start_holder(tmp_path)
    yield proc
    proc.kill()
    proc.wait()


def test_second_run_refuses_naming_the_holder(tmp_path, holder):
    started = time.monotonic()
    with pytest.raises(RunLocked) as refused, run_lock(tmp_path, "second"):
        pass
    assert time.monotonic() - started < 2
    message = str(refused.value)
    assert f"pid {holder.pid}" in message and "holder test" in message and "started 20" in message
    assert "\n" not in message


def test_a_stage_refuses_with_one_error_line_and_exit_2(tmp_path, holder):
    refused = simclr(tmp_path, "subsets")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert refused.stderr.startswith("error: another run holds") and f"pid {holder.pid}" in refused.stderr


def test_the_holders_children_run_under_its_lock(tmp_path, holder):
    token = f"{holder.pid}:{(tmp_path / LOCK_FILE).resolve()}"
    inherited = simclr(tmp_path, "subsets", env={TOKEN_ENV: token})
    assert "another run holds" not in inherited.stderr  # got past the lock (fails on params.yaml)
    assert inherited.returncode == 2 and "no canonical data set" in inherited.stderr
    forged = simclr(tmp_path, "subsets", env={TOKEN_ENV: f"1:{tmp_path / LOCK_FILE}"})
    assert "another run holds" in forged.stderr


def test_lock_of_a_killed_run_is_taken_over(tmp_path):
    proc = start_holder(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_holder(tmp_path / LOCK_FILE)["pid"] == proc.pid  # its label is still there
    with run_lock(tmp_path, "after the kill"):
        assert read_holder(tmp_path / LOCK_FILE)["pid"] == os.getpid()


def test_a_waiting_run_starts_once_the_holder_ends(tmp_path):
    proc = start_holder(tmp_path)
    subprocess.Popen(["sh", "-c", f"sleep 1; kill {proc.pid}"])
    started = time.monotonic()
    with run_lock(tmp_path, "waiter", wait_s=60):
        assert 0.5 < time.monotonic() - started < 30
    proc.wait()


def test_re_entrant_within_one_process(tmp_path):
    with run_lock(tmp_path, "outer") as outer, run_lock(tmp_path, "inner") as inner:
        assert inner.token == outer.token
    with run_lock(tmp_path, "again"):
        pass
