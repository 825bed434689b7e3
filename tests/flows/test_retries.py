"""Retries of a stage that fails for a real, transient reason, and none for bad input.

The transient failure is DVC's own repository lock (``.dvc/tmp/lock``) held by this test process,
as a concurrent ``dvc`` command would hold it: the stage's ``dvc`` gives up after ~3 s and exits 1.
"""

from __future__ import annotations

import contextvars
import threading
import time

import pytest
import zc.lockfile
from mlflow import MlflowClient
from prefect.artifacts import Artifact

from flows.pipeline import ARTIFACT_KEY, RAN, simclr_pipeline
from tests.flows.conftest import project_with_store, task_runs

pytestmark = pytest.mark.slow
BACKOFF_S = 1.0


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api):
    yield from project_with_store(tmp_path_factory.mktemp("retries") / "project")


@pytest.fixture
def dvc_lock(project):
    """Hold DVC's repository lock; ``.close()`` releases it (done at teardown in any case)."""
    path = project.root / ".dvc" / "tmp" / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = zc.lockfile.LockFile(str(path))
    yield lock
    lock.close()


@pytest.fixture
def restore_params(project):
    before = (project.root / "params.yaml").read_text()
    yield
    (project.root / "params.yaml").write_text(before)


def run_ingest(project):
    return simclr_pipeline(project_dir=str(project.root), stages=["ingest"],
                           retry_backoff_s=BACKOFF_S, return_state=True)


def release_after_first_failure(lock, stage: str, timeout_s: float = 300) -> threading.Thread:
    """Release ``lock`` once the API shows ``stage`` waiting for (or running) its retry."""
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                runs = client.read_task_runs(
                    task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[stage])))
                if any(run.state_name in ("AwaitingRetry", "Retrying") for run in runs):
                    break
                time.sleep(0.1)
        lock.close()

    # the thread needs this context: it holds the test harness's API settings
    thread = threading.Thread(target=contextvars.copy_context().run, args=(watch,), daemon=True)
    thread.start()
    return thread


def test_stage_that_keeps_failing_fails_the_flow_naming_the_stage(project, dvc_lock):
    state = run_ingest(project)
    assert state.is_failed()
    assert "stage ingest failed" in state.message and "lock" in state.message
    ingest = task_runs(state.state_details.flow_run_id)["ingest"]  # after the source check
    assert ingest.run_count == 3  # retries=2
    assert not (project.root / "dvc.lock").exists()
    client = MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("simclr").experiment_id],
        f"tags.prefect_flow_run_id = '{state.state_details.flow_run_id}' and tags.pipeline = 'true'")
    assert parent.info.status == "FAILED"
    artifact = Artifact.get(ARTIFACT_KEY)  # published after a failure too
    assert artifact.flow_run_id == state.state_details.flow_run_id
    assert "| ingest | failed |" in artifact.data


def test_bad_input_is_not_retried(project, restore_params):
    missing = project.root / "no-such-folder"
    state = simclr_pipeline(project_dir=str(project.root), stages=["ingest"],
                            overrides=["data.source.kind=image_folder",
                                       f"data.source.path={missing}"],
                            retry_backoff_s=BACKOFF_S, return_state=True)
    assert state.is_failed()
    assert "stage ingest failed (bad input" in state.message and str(missing) in state.message
    ingest = task_runs(state.state_details.flow_run_id)["ingest"]  # after the source check
    assert ingest.run_count == 1


def test_stage_that_fails_once_is_retried_and_the_flow_completes(project, dvc_lock):
    watcher = release_after_first_failure(dvc_lock, "ingest")
    state = run_ingest(project)
    watcher.join(timeout=5)
    assert state.is_completed(), state.message
    assert state.result() == {"ingest": RAN}
    ingest = task_runs(state.state_details.flow_run_id)["ingest"]  # after the source check
    assert ingest.run_count == 2
    assert "ingest:" in (project.root / "dvc.lock").read_text()
