"""Fixtures for the Prefect flow tests: a real (temporary) Prefect API and project copies."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.project import FAST_DATA_PARAMS, ProjectCopy, make_project_copy

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
DATA_STAGES = ["ingest", "subsets"]


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """Prefect's test harness: a real API server on a throw-away database, for the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def project_with_store(root: Path, params: dict[str, Any] | None = None) -> Iterator[ProjectCopy]:
    """A project copy (``params``, by default digits data) whose stages and flow share one MLflow
    store inside it."""
    project = make_project_copy(root, params or FAST_DATA_PARAMS)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", project.env["MLFLOW_TRACKING_URI"])
        yield project


def task_runs(flow_run_id) -> dict[str, object]:
    """``{task run name: TaskRun}`` of one flow run, read back from the API."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run for run in runs}
