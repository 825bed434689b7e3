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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``prefect server start`` on a free loopback port, its own PREFECT_HOME; yields the env."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_CLI_PROMPT": "false"}
    env.pop("PREFECT_API_URL", None)
    log = home / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(url, proc, log)
        yield {**env, "PREFECT_API_URL": url}
    finally:
        stop_tree(proc)


def start_logged(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def first_scheduled_run(server: dict[str, str], name: str, runner: subprocess.Popen, log: Path):
    """Wait for the first run of deployment ``name`` to finish (pausing its schedule once one runs)."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline, run, paused, deployment = time.monotonic() + RUN_TIMEOUT_S, None, False, None
    with temporary_settings({PREFECT_API_URL: server["PREFECT_API_URL"]}), \
            get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert runner.poll() is None, log.read_text()[-3000:]
            if deployment is None:
                found = client.read_deployments(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])))
                deployment = found[0] if found else None
            if deployment is not None:
                assert deployment.schedules
                runs = [r for r in client.read_flow_runs() if r.deployment_id == deployment.id
                        and r.state_name != "Scheduled"]
                if runs and not paused:  # one scheduled run is enough: stop the schedule
                    client.pause_deployment(deployment.id)
                    paused = True
                run = runs[0] if runs else None
                if run is not None and run.state.is_final():
                    break
            time.sleep(1)
    assert run is not None, f"no scheduled run of {name} started:\n{log.read_text()[-3000:]}"
    assert run.state.is_completed(), f"{run.state}\n{log.read_text()[-4000:]}"
    assert run.auto_scheduled and run.parameters["stages"] == DATA_STAGES
    return deployment, run


def assert_recorded(project, run) -> None:
    """DVC locked the stages and the run's MLflow parent run finished."""
    assert "ingest:" in (project.root / "dvc.lock").read_text()
    mlflow = MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    (parent,) = mlflow.search_runs([mlflow.get_experiment_by_name("simclr").experiment_id],
                                   f"tags.prefect_flow_run_id = '{run.id}' and tags.pipeline = 'true'")
    assert parent.info.status == "FINISHED"


def test_worker_runs_a_scheduled_run_of_the_deployment(project, server, tmp_path):
    deployed = subprocess.run(
        [sys.executable, "-m", "flows.deploy", "deploy", "--interval", "10", "--preset", "tiny",
         "--stages", *DATA_STAGES, "--project-dir", str(project.root)],
        cwd=project.root, env=server, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "created process work pool simclr-process" in deployed.stdout

    log = tmp_path / "worker.log"
    worker = start_logged([str(VENV_BIN / "prefect"), "worker", "start", "--pool", "simclr-process",
                           "--limit", "1"], tmp_path, server, log)
    try:
        deployment, run = first_scheduled_run(server, "weekly-retrain", worker, log)
        assert deployment.work_pool_name == "simclr-process"
    finally:
        stop_tree(worker)
    assert_recorded(project, run)


def test_serve_runs_a_scheduled_run(project, server, tmp_path):
    log = tmp_path / "serve.log"
    serving = start_logged(
        [sys.executable, "-m", "flows.deploy", "serve", "--name", "quick-serve", "--interval", "10",
         "--preset", "tiny", "--stages", *DATA_STAGES, "--project-dir", str(project.root)],
        project.root, server, log)
    try:
        deployment, run = first_scheduled_run(server, "quick-serve", serving, log)
        assert deployment.work_pool_name is None
    finally:
        stop_tree(serving)
    assert_recorded(project, run)


def deployment_named(server: dict[str, str], name: str):
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server["PREFECT_API_URL"]}), \
            get_client(sync_client=True) as client:
        (deployment,) = client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])))
    return deployment


def test_deployments_run_one_at_a_time(project, server):
    """Both ways of deploying (flows.deploy and prefect.yaml) set concurrency limit 1."""
    deployed = subprocess.run(
        [sys.executable, "-m", "flows.deploy", "deploy", "--name", "limited", "--project-dir",
         str(project.root)], cwd=project.root, env=server, capture_output=True, text=True,
        timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    from_yaml = subprocess.run([str(VENV_BIN / "prefect"), "--no-prompt", "deploy", "--name",
                                "weekly-retrain"], cwd=project.root, env=server,
                               capture_output=True, text=True, timeout=300)
    assert from_yaml.returncode == 0, from_yaml.stdout + from_yaml.stderr
    for name in ("limited", "weekly-retrain"):
        deployment = deployment_named(server, name)
        assert deployment.global_concurrency_limit is not None, name
        assert deployment.global_concurrency_limit.limit == 1, name
