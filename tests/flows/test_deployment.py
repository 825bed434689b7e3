"""A scheduled run end to end: real `prefect server start`, `flows.deploy deploy`, a process worker.

The deployment gets a short interval schedule; the server's scheduler creates its runs, the worker
picks the first one up (the schedule is paused once it runs, so it is the only one), and the flow
runs the data stages in the project copy and records its MLflow parent run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from tests.flows.conftest import DATA_STAGES, project_with_store

pytestmark = pytest.mark.slow
VENV_BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 180
RUN_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_tree(proc: subprocess.Popen) -> None:
    """Terminate ``proc`` and every process it started (flow runs get their own sessions)."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(tree, timeout=10)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=10)
    proc.wait(timeout=10)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prefect server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"prefect server not healthy after {STARTUP_TIMEOUT_S} s")


@pytest.fixture
def project(tmp_path):
    yield from project_with_store(tmp_path / "project")


@pytest.fixture
def server(tmp_path):
    """``prefect server start`` on a free loopback port, its own PREFECT_HOME; yields the env."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_CLI_PROMPT": "false"}
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(url, proc, log)
        yield {**env, "PREFECT_API_URL": url}
    finally:
        stop_tree(proc)


def test_worker_runs_a_scheduled_run_of_the_deployment(project, server, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deployed = subprocess.run(
        [sys.executable, "-m", "flows.deploy", "deploy", "--interval", "10", "--preset", "tiny",
         "--stages", *DATA_STAGES, "--project-dir", str(project.root)],
        cwd=project.root, env=server, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "created process work pool simclr-process" in deployed.stdout

    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen([str(VENV_BIN / "prefect"), "worker", "start", "--pool",
                                   "simclr-process", "--limit", "1"],
                                  cwd=tmp_path, env=server, stdout=out, stderr=subprocess.STDOUT)
    try:
        with temporary_settings({PREFECT_API_URL: server["PREFECT_API_URL"]}), \
                get_client(sync_client=True) as client:
            (deployment,) = client.read_deployments(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["weekly-retrain"])))
            assert deployment.schedules and deployment.work_pool_name == "simclr-process"
            deadline, run, paused = time.monotonic() + RUN_TIMEOUT_S, None, False
            while time.monotonic() < deadline:
                runs = [r for r in client.read_flow_runs() if r.deployment_id == deployment.id
                        and r.state_name != "Scheduled"]
                if runs and not paused:  # one scheduled run is enough: stop the schedule
                    client.pause_deployment(deployment.id)
                    paused = True
                run = runs[0] if runs else None
                if run is not None and run.state.is_final():
                    break
                assert worker.poll() is None, log.read_text()[-3000:]
                time.sleep(1)
            assert run is not None, f"no scheduled run started:\n{log.read_text()[-3000:]}"
            assert run.state.is_completed(), f"{run.state}\n{log.read_text()[-4000:]}"
            assert run.auto_scheduled and run.parameters["stages"] == DATA_STAGES
    finally:
        stop_tree(worker)

    assert "ingest:" in (project.root / "dvc.lock").read_text()
    mlflow = MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    (parent,) = mlflow.search_runs([mlflow.get_experiment_by_name("simclr").experiment_id],
                                   f"tags.prefect_flow_run_id = '{run.id}' and tags.pipeline = 'true'")
    assert parent.info.status == "FINISHED" and parent.data.tags["pipeline"] == "true"
