"""The weekly retrain: new images in the source folder rerun ingest and everything after it;
nothing new is a fast no-op that opens no MLflow run. Real DVC, MLflow store, Prefect API, Ray."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from flows.pipeline import RAN, SKIPPED, simclr_pipeline
from tests.flows.conftest import project_with_store, task_runs

pytestmark = [pytest.mark.slow, pytest.mark.ray]
STAGES = ["ingest", "subsets", "pretrain"]
CLASSES = ("a", "b", "c")


def add_images(folder: Path, start: int, count: int) -> None:
    """``count`` random 8x8 grey PNGs per class, named from ``start``."""
    rng = np.random.default_rng(start)
    for label in CLASSES:
        (folder / label).mkdir(parents=True, exist_ok=True)
        for index in range(start, start + count):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(
                folder / label / f"{index:04d}.png")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("source") / "images"
    add_images(folder, 0, 60)
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api, images):
    from tests.project import tiny_params

    for project in project_with_store(tmp_path_factory.mktemp("weekly") / "project"):
        tiny = tiny_params()
        tiny["data"].update(source={"kind": "image_folder", "path": str(images), "name": "images"},
                            transfer=[])
        tiny["subsets"]["fractions"] = [0.1, 0.5]
        tiny["ray"]["num_workers"] = 1  # the flow's logic is under test, not data parallelism
        project.update_params(tiny)
        project.commit("an image-folder source")
        yield project


def parent_runs(project) -> list[Any]:
    client = MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("simclr")
    if experiment is None:
        return []
    return [run for run in client.search_runs([experiment.experiment_id])
            if run.data.tags.get("pipeline") == "true"]


def run_flow(project):
    started = time.monotonic()
    state = simclr_pipeline(project_dir=str(project.root), stages=STAGES, return_state=True)
    assert state.is_completed(), state.message
    return state, time.monotonic() - started


def plotted_rows(shown: Any, path: str) -> list[dict[str, Any]]:
    """The data rows ``dvc plots show --json`` rendered for ``path``."""
    rows: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "epoch" in node and not isinstance(node["epoch"], dict | list):
                rows.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk([value for key, value in shown["data"].items() if key.endswith(path)])
    return rows


def test_new_images_rerun_ingest_and_downstream_and_nothing_new_is_a_quick_no_op(project, images):
    state, seconds = run_flow(project)
    assert state.result() == dict.fromkeys(STAGES, RAN)
    assert len(parent_runs(project)) == 1
    fingerprint = json.loads((project.root / "outputs/fingerprint/fingerprint.json").read_text())
    assert fingerprint["images"]["files"] == 180
    print(f"first run: {seconds:.1f} s")

    # dvc plots renders the pretraining curves: every epoch's loss, the kNN monitor's points
    shown = json.loads(project.dvc("plots", "show", "--json").stdout)
    history = plotted_rows(shown, "pretrain/history.json")
    for curve in ("loss", "contrastive_acc"):
        assert sorted(row["epoch"] for row in history if row.get("field") == curve) == [1, 2], shown
    monitor = plotted_rows(shown, "pretrain/knn_monitor.json")
    assert sorted(row["epoch"] for row in monitor if "pretrain_monitor_knn_top1" in row) == [1, 2], shown

    state, seconds = run_flow(project)  # the scheduled run a week later: nothing new
    assert state.result() == dict.fromkeys(STAGES, SKIPPED)
    assert len(parent_runs(project)) == 1, "a no-op run opened an MLflow run"
    assert set(task_runs(state.state_details.flow_run_id)) == {"fingerprint"}
    print(f"no-op run: {seconds:.1f} s")
    assert seconds < 60

    hashes_before = json.loads((project.root / "outputs/ingest/hashes.json").read_text())
    add_images(images, 60, 10)  # new images arrive in the source folder
    state, seconds = run_flow(project)
    assert state.result() == dict.fromkeys(STAGES, RAN)
    assert len(parent_runs(project)) == 2
    hashes_after = json.loads((project.root / "outputs/ingest/hashes.json").read_text())
    assert hashes_after["images"] != hashes_before["images"]
    metrics = json.loads((project.root / "outputs/ingest/metrics.json").read_text())
    assert sum(v for k, v in metrics.items() if k.endswith("_count")) == 210
    print(f"run with new images: {seconds:.1f} s")
