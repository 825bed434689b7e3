"""Fixtures for tracking tests: a throw-away git project as cwd and a sqlite MLflow store in it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.components.tracking.helpers import make_project


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed git repo (params.yaml, dvc.lock, data manifest) that is the current directory."""
    for name in ("MLFLOW_TRACKING_URI", "SIMCLR_PARENT_RUN_ID", "PREFECT__FLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    root = make_project(tmp_path / "project")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


@pytest.fixture
def client(sqlite_uri: str) -> MlflowClient:
    (Path(sqlite_uri[len("sqlite:///"):])).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=sqlite_uri, registry_uri=sqlite_uri)
