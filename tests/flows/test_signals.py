"""Stopping `python -m flows` during pretraining stops all of its work.

SIGTERM: the flow stops the stage's process group (dvc, simclr, the Ray instance), marks the
MLflow runs, stops Prefect's temporary API server and exits 143 within seconds. SIGKILL of the
flow process alone: its watchdog stops every process the run started. Either way no process of
the run is left (listed with psutil before the signal), and the next run sweeps MLflow runs a
dead process left RUNNING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from tests.project import FAST_DATA_PARAMS, ProjectCopy, make_project_copy

pytestmark = [pytest.mark.slow, pytest.mark.ray]
PRETRAIN = ["--preset", "tiny", "--set", "pretrain.epochs=200", "--set", "pretrain.knn_every=0",
            "--stages", "ingest", "pretrain"]
STOP_WITHIN_S = 20  # a busy 2-core machine; typically a few seconds
GRACE_S = 20


@pytest.fixture
def flows_started():
    """Processes started by a test; any still alive at teardown are stopped (a failed test)."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def project(tmp_path) -> ProjectCopy:
    return make_project_copy(tmp_path / "project", {**FAST_DATA_PARAMS, "data": {
        **FAST_DATA_PARAMS["data"], "transfer": []}})


def start_flow(project: ProjectCopy, log: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, **project.env, "PREFECT_API_URL": "",
           "PREFECT_HOME": str(project.root / ".prefect")}
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "flows", *args], cwd=project.root, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:  # gone, or a zombie
        return ""


def run_tree_while_pretraining(flow: subprocess.Popen, log: Path) -> list[psutil.Process]:
    """Once Ray Train is training (a raylet and a worker exist): the flow's descendants."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert flow.poll() is None, log.read_text()[-4000:]
        tree = psutil.Process(flow.pid).children(recursive=True)
        names = " ".join(cmdline(proc) for proc in tree)
        if "raylet" in names and "epoch" in log.read_text():
            return tree
        time.sleep(1)
    raise AssertionError(f"pretraining did not start:\n{log.read_text()[-4000:]}")


def survivors(tree: list[psutil.Process], grace_s: float) -> list[str]:
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    return [f"{proc.pid} {cmdline(proc)[:120]}" for proc in alive if cmdline(proc)]


def stage_runs(project: ProjectCopy) -> dict[str, str]:
    client = MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("simclr")
    runs = client.search_runs([experiment.experiment_id])
    return {run.data.tags.get("stage") or "pipeline": run.info.status for run in runs
            if run.data.tags.get("stage") in ("pretrain", None)}


def test_sigterm_stops_the_stage_and_everything_it_started(project, tmp_path, flows_started):
    log = tmp_path / "flow.log"
    flow = start_flow(project, log, *PRETRAIN)
    flows_started.append(flow)
    tree = run_tree_while_pretraining(flow, log)
    flow.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    flow.wait(timeout=120)
    took = time.monotonic() - stopped
    print(f"flow exited {took:.1f} s after SIGTERM")  # shown with -rP
    output = log.read_text()
    assert flow.returncode == 128 + signal.SIGTERM, output[-4000:]
    assert took < STOP_WITHIN_S, f"{took:.1f} s\n{output[-4000:]}"
    assert "error: pipeline stopped by SIGTERM" in output
    assert survivors(tree, GRACE_S) == []
    runs = stage_runs(project)
    assert runs["pretrain"] == "FAILED" and runs["pipeline"] == "KILLED", runs


def test_sigkill_of_the_flow_alone_leaves_no_process_behind(project, tmp_path, flows_started):
    log = tmp_path / "flow.log"
    flow = start_flow(project, log, *PRETRAIN)
    flows_started.append(flow)
    tree = run_tree_while_pretraining(flow, log)
    flow.send_signal(signal.SIGKILL)
    flow.wait(timeout=30)
    assert survivors(tree, GRACE_S) == []

    again = start_flow(project, tmp_path / "again.log", "--stages", "ingest")
    flows_started.append(again)
    assert again.wait(timeout=600) == 0, (tmp_path / "again.log").read_text()[-4000:]
    assert "RUNNING" not in stage_runs(project).values()  # swept by the next run
