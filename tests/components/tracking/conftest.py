"""Fixtures for tracking tests: a throw-away git project as cwd and a sqlite MLflow store in it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.components.tracking.helpers import fresh_store, make_project, migrated_store

__all__ = ["migrated_store"]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed git repo (params.yaml, dvc.lock, data manifest) that is the current directory."""
    for name in ("MLFLOW_TRACKING_URI", "SIMCLR_PARENT_RUN_ID", "PREFECT__FLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    root = make_project(tmp_path / "project")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def sqlite_uri(tmp_path: Path, migrated_store: Path) -> str:
    """A fresh sqlite store (a copy of a migrated template: migrations cost seconds each)."""
    return fresh_store(migrated_store, tmp_path / "store" / "mlflow.db")


@pytest.fixture
def client(sqlite_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=sqlite_uri, registry_uri=sqlite_uri)
