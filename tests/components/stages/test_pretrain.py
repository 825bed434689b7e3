"""Stage ``pretrain`` end to end on real Ray workers and a 512-image Fashion-MNIST slice.

One test (each Ray ``fit()`` costs 15-40 s of fixed overhead here): the stage process is killed
after a checkpoint, the stage is run again, and the resumed run's outputs are checked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from components.config import PipelineConfig
from components.data.store import CanonicalDataset
from components.models.checkpoint import load_encoder
from components.stage_api import StageResult
from components.stages.runner import stage_function
from components.training.ray_driver import run_name_for
from tests.components.training.conftest import fmnist_root, ray_session, tiny_config  # noqa: F401

run = stage_function("pretrain")  # the stage under the runner, untracked

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.ray
@pytest.mark.slow
def test_killed_stage_process_resumes_from_its_last_checkpoint(
        ray_session: str, fmnist_root: Path, tmp_path: Path) -> None:  # noqa: F811
    """SIGKILL the stage process after its 2nd checkpoint; running the stage again resumes,
    finishes, and writes the encoder (loads with load_encoder), metrics, history and plot.

    The killed process is a separate driver connected to the session Ray instance
    (RAY_ADDRESS); its Train controller and workers die with it (they are owned by it).
    """
    cfg = tiny_config(fmnist_root, tmp_path, pretrain={"epochs": 8, "knn_every": 4})
    dataset = CanonicalDataset(fmnist_root / "datasets" / "fashion-mnist")
    run_dir = Path(cfg.ray.storage_path) / run_name_for(cfg, dataset.content_hash)
    script = textwrap.dedent(f"""
        from components.config import config_from_dict
        from components.stages.runner import stage_function
        stage_function("pretrain")(config_from_dict({cfg.model_dump(mode="json")!r}))
    """)
    log_path = tmp_path / "killed-stage.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT,
                                env={**os.environ, "RAY_ADDRESS": ray_session})
        try:
            deadline = time.monotonic() + 180
            while _latest_registered_epoch(run_dir) < 2:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.1)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    text = log_path.read_text()
    assert "epoch 1/8 done" in text and "ETA" in text  # rank 0's progress lines reach the driver
    assert not (tmp_path / "outputs" / "pretrain" / "encoder.pt").exists()

    result = run(cfg)  # the same stage again, in this process: resumes
    history = result.history
    assert [row["epoch"] for row in history] == list(range(1, 9))
    assert [row["step"] for row in history] == [8 * e for e in range(1, 9)]
    resumed = history[-1]["resumed_from"]
    assert resumed >= 2, history  # not restarted from scratch
    assert all(row["resumed_from"] == 0 for row in history[:resumed])
    assert all(row["resumed_from"] == resumed for row in history[resumed:])
    assert history[-1]["loss"] < history[0]["loss"]
    _check_outputs(cfg, result, tmp_path / "outputs" / "pretrain", fmnist_root)


def _check_outputs(cfg: PipelineConfig, result: StageResult, out: Path, data_root: Path) -> None:
    """encoder.pt loads with load_encoder; metrics/history JSON match the StageResult; PNG plot."""
    encoder, spec = load_encoder(out / "encoder.pt", expect=cfg.model)
    assert (spec.in_channels, spec.image_size) == (1, 28)
    assert spec.meta["ray_run_name"] == result.tags["ray_run_name"]
    with torch.no_grad():
        assert encoder(torch.rand(2, 1, 28, 28)).shape == (2, encoder.feature_dim)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == result.metrics
    for name in ("final_loss", "contrastive_acc", "epochs", "pretrain_monitor_knn_top1"):
        assert name in metrics, name
    assert metrics["epochs"] == cfg.pretrain.epochs and 0.0 <= metrics["pretrain_monitor_knn_top1"] <= 1.0
    # run-varying numbers go to MLflow and the untracked timings file, never into the DVC out
    timings = json.loads((out.parent / "timings" / "pretrain.json").read_text())
    assert timings == result.timings and timings["wall_time_s"] > 0
    assert timings["resumed_from"] == result.history[-1]["resumed_from"]
    assert not set(metrics) & set(timings)
    history = json.loads((out / "history.json").read_text())
    assert len(history) == len(result.history)
    for key in ("epoch", "step", "loss", "lr", "contrastive_acc"):
        assert all(key in row for row in history), key
    assert not any(key in row for row in history for key in ("images_per_s", "epoch_time_s",
                                                              "resumed_from"))
    assert all("images_per_s" in row for row in result.history)  # still logged to MLflow
    assert len({tuple(sorted(row)) for row in history}) == 1  # one set of keys: dvc plots
    monitor = json.loads((out / "knn_monitor.json").read_text())
    assert [row["epoch"] for row in monitor] == [4, 8]  # knn_every=4
    assert all(set(row) == {"epoch", "pretrain_monitor_knn_top1"} for row in monitor)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dataset = CanonicalDataset(data_root / "datasets" / "fashion-mnist")
    assert result.tags["ray_run_name"] == run_name_for(cfg, dataset.content_hash)
    # checkpoints live outside the stage outputs (DVC deletes outs before a stage runs)
    assert Path(result.tags["ray_checkpoint"]).is_relative_to(Path(cfg.ray.storage_path))
    assert not Path(cfg.ray.storage_path).is_relative_to(out)


def _latest_registered_epoch(run_dir: Path) -> int:
    """The newest checkpoint in Ray's run snapshot (what a resumed fit() starts from)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return int(snapshot["latest_checkpoint_result"]["checkpoint_dir_name"].split("-")[1])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, IndexError):
        return 0
