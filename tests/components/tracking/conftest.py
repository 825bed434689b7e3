"""Fixtures for tracking tests: a throw-away git project as cwd and a sqlite MLflow store in it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.components.tracking.helpers import fresh_store, migrated_store, project

__all__ = ["migrated_store", "project"]


@pytest.fixture
def sqlite_uri(tmp_path: Path, migrated_store: Path) -> str:
    """A fresh sqlite store (a copy of a migrated template: migrations cost seconds each)."""
    return fresh_store(migrated_store, tmp_path / "store" / "mlflow.db")


@pytest.fixture
def client(sqlite_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=sqlite_uri, registry_uri=sqlite_uri)
