"""Shared builders for tracking/registry tests: a throw-away project (git repo), tiny encoders."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient

from components.config import PipelineConfig, config_from_dict
from components.models.checkpoint import save_encoder
from components.models.encoder import build_encoder
from components.stage_api import StageResult
from components.stages.runner import run_stage
from components.tracking.runs import tracked_stage

IMAGE_SIZE, CHANNELS = 16, 1
MODEL = {"arch": "small", "width": 0.25}


def make_cfg(tracking_uri: str, **sections: Any) -> PipelineConfig:
    raw: dict[str, Any] = {"model": MODEL, "tracking": {"tracking_uri": tracking_uri,
                                                        "experiment": "test"}}
    raw.update(sections)
    return config_from_dict(raw)


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


def make_project(root: Path) -> Path:
    """A git repo with params.yaml, dvc.lock and a data manifest committed; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text("seed: 0\n")
    (root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  ingest:\n    cmd: simclr ingest\n    outs:\n"
        "    - path: data/datasets\n      md5: 0123456789abcdef.dir\n")
    manifest = root / "data" / "datasets" / "fashion-mnist" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"name": "fashion-mnist", "content_hash": "c0ffee"}))
    git(root, "init", "-q")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return root


def write_encoder(root: Path, cfg: PipelineConfig, seed: int = 0) -> Path:
    """outputs/pretrain/encoder.pt in the real checkpoint format (a tiny, randomly initialised f)."""
    torch.manual_seed(seed)
    encoder = build_encoder(cfg.model, in_channels=CHANNELS, image_size=IMAGE_SIZE)
    path = root / cfg.paths.outputs / "pretrain" / "encoder.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_encoder(path, encoder, cfg.model, CHANNELS, IMAGE_SIZE,
                 meta={"stage": "pretrain", "ray_run_name": f"ray-run-{seed}",
                       "dataset": "fashion-mnist", "dataset_content_hash": "c0ffee"})
    return path


def write_metrics(root: Path, stage: str, metrics: dict[str, float],
                  outputs: str = "outputs") -> None:
    path = root / outputs / stage / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))


def pretrain_stage(root: Path):
    """A stand-in pretrain stage body that only reports the encoder file of ``write_encoder``."""
    def run(run_id: str) -> StageResult:
        return StageResult(metrics={"final_loss": 1.0},
                           artifacts=[root / "outputs" / "pretrain" / "encoder.pt"],
                           tags={"ray_run_name": "ray-run"},
                           history=[{"epoch": e, "step": 10 * e, "loss": 2.0 - e} for e in (1, 2)])
    return run


def register_candidate(root: Path, cfg: PipelineConfig, metrics: dict[str, float],
                       seed: int = 0) -> StageResult:
    """Write an encoder + evaluation metrics, track a pretrain run, then run stage ``register``."""
    write_encoder(root, cfg, seed)
    write_metrics(root, "linear-eval", metrics)
    tracked_stage(cfg, "pretrain", pretrain_stage(root))
    return run_stage(cfg, "register")


def aliases(client: MlflowClient, name: str = "simclr-encoder") -> dict[str, str]:
    return {alias: str(version)
            for alias, version in client.get_registered_model(name).aliases.items()}


def write_params(root: Path, tracking_uri: str, name: str = "test-params.yaml",
                 **sections: Any) -> Path:
    """A params file for the ``simclr`` CLI with the test's store, tiny model and ``sections``."""
    import yaml

    raw: dict[str, Any] = {"model": MODEL, "tracking": {"tracking_uri": tracking_uri,
                                                        "experiment": "test"}}
    raw.update(sections)
    path = root / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed git repo (params.yaml, dvc.lock, data manifest) that is the current directory."""
    for name in ("MLFLOW_TRACKING_URI", "SIMCLR_PARENT_RUN_ID", "PREFECT__FLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    root = make_project(tmp_path / "project")
    monkeypatch.chdir(root)
    return root


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite database with every schema migration applied (slow: done once)."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def fresh_store(template: Path, path: Path) -> str:
    """A copy of the migrated template at ``path``; returns its ``sqlite:///`` URI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"
