"""The registered encoder loads back trainable; manual promote/rollback; concurrent registrations."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from components.models.checkpoint import load_encoder
from components.stages.cli import main
from components.tracking.registry import (
    load_encoder_from_registry,
    model_files_uri,
    version_metrics,
)
from tests.components.tracking.helpers import (
    CHANNELS,
    IMAGE_SIZE,
    aliases,
    git,
    make_cfg,
    register_candidate,
    write_encoder,
    write_metrics,
    write_params,
)

REPO = Path(__file__).resolve().parents[3]


def test_champion_loads_back_as_a_trainable_encoder(project: Path, sqlite_uri: str) -> None:
    cfg = make_cfg(sqlite_uri)
    global_uris = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    register_candidate(project, cfg, {"linear_val_top1": 0.7})
    original, spec = load_encoder(project / "outputs" / "pretrain" / "encoder.pt")
    original.eval()
    x = torch.rand(5, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)

    encoder = load_encoder_from_registry("models:/simclr-encoder@champion", tracking_uri=sqlite_uri)
    assert encoder.spec.image_size == IMAGE_SIZE and encoder.spec.meta == spec.meta
    assert torch.allclose(encoder(x), original(x), atol=1e-6)
    assert any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules())

    encoder.train()  # fine-tune: gradients flow and a step changes the weights
    before = [p.detach().clone() for p in encoder.parameters()]
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    loss = encoder(x).pow(2).mean()
    loss.backward()
    optimizer.step()
    assert all(p.grad is not None for p in encoder.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, encoder.parameters(), strict=True))

    # the generic MLflow APIs: pyfunc (fine-tunable copy) and the pt2 inference copy
    expected = original(x).detach().numpy()
    def download(uri: str) -> str:  # explicit store: MLflow's process-wide URIs stay unset
        files = model_files_uri(MlflowClient(sqlite_uri, sqlite_uri), uri)
        return mlflow.artifacts.download_artifacts(artifact_uri=files, tracking_uri=sqlite_uri)

    served = mlflow.pyfunc.load_model(download("models:/simclr-encoder@champion")).predict(x.numpy())
    np.testing.assert_allclose(served, expected, atol=1e-5)
    version = MlflowClient(sqlite_uri, sqlite_uri).get_model_version_by_alias(
        "simclr-encoder", "champion")
    exported = mlflow.pytorch.load_model(download(version.tags["inference_model_uri"]))
    np.testing.assert_allclose(exported(x).detach().numpy(), expected, atol=1e-5)
    # registering and loading set none of MLflow's process-wide state
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == global_uris
    assert sqlite_uri not in global_uris and mlflow.active_run() is None
    assert "MLFLOW_REGISTRY_URI" not in os.environ


def test_models_promote_and_rollback_commands(project: Path, sqlite_uri: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    gate = {"gate": {"metric": "linear_val_top1", "min_improvement": 0.01}}
    cfg = make_cfg(sqlite_uri, registry=gate)
    params = str(write_params(project, sqlite_uri, registry=gate))
    client = MlflowClient(sqlite_uri, sqlite_uri)
    register_candidate(project, cfg, {"linear_val_top1": 0.70, "linear_top1": 0.60})
    register_candidate(project, cfg, {"linear_val_top1": 0.65, "linear_top1": 0.99}, seed=1)
    assert aliases(client) == {"champion": "1", "challenger": "2"}  # val decides, not test
    version = client.get_model_version("simclr-encoder", "2")
    assert version.tags["gate_metric"] == "linear_val_top1"
    assert version.tags["gate_metric_value"] == "0.6500"
    # the metrics are on the logged model (MLflow 3's Models pages), test next to val
    logged = {m.key: m.value for m in client.get_logged_model(version.tags["model_id"]).metrics}
    assert logged["linear_top1"] == 0.99 and logged["linear_val_top1"] == 0.65
    assert version_metrics(client, version)["linear_top1"] == 0.99
    capsys.readouterr()

    assert main(["models", "--params", params]) == 0
    table = capsys.readouterr().out.splitlines()
    # version, aliases, date; the deciding (validation) metric and its test counterpart; which
    # metric decided and how; git; what the registry decided (consistent with the aliases)
    assert table[0].split() == ["version", "aliases", "created", "(UTC)", "linear_val_top1",
                                "linear_top1", "decided", "by", "git", "decision"]
    today, commit = time.strftime("%Y-%m-%d", time.gmtime()), git(project, "rev-parse", "HEAD")[:8]
    second, first = table[1].split(), table[2].split()
    assert second[:3] == ["2", "challenger", today]
    assert second[4:] == ["0.6500", "0.9900", "linear_val_top1", "(refused)", commit, "refused"]
    assert first[:3] == ["1", "champion", today]
    assert first[4:] == ["0.7000", "0.6000", "linear_val_top1", "(passed)", commit,
                         "promoted", "by", "the", "gate"]

    assert main(["promote", "2", "--params", params]) == 0
    assert aliases(client) == {"champion": "2", "challenger": "2", "previous-champion": "1"}
    assert main(["rollback", "--params", params]) == 0
    assert aliases(client) == {"champion": "1", "challenger": "2", "previous-champion": "2"}
    assert "rolled back to version 1" in capsys.readouterr().out

    assert main(["promote", "7", "--params", params]) == 2
    assert "no version 7" in capsys.readouterr().err
    client.delete_registered_model_alias("simclr-encoder", "previous-champion")
    assert main(["rollback", "--params", params]) == 2
    assert "previous-champion" in capsys.readouterr().err

    # fine-tune and kNN columns appear once a version has them
    write_metrics(project, "finetune", {"finetune_10pct_val_top1": 0.5, "finetune_10pct_top1": 0.4})
    register_candidate(project, cfg, {"linear_val_top1": 0.9, "linear_top1": 0.8,
                                      "knn_top1": 0.7}, seed=2)
    capsys.readouterr()
    assert main(["models", "--params", params]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[4:8] == ["linear_val_top1", "linear_top1", "finetune_10pct_top1",
                                     "knn_top1"]
    assert table[1].split()[:2] == ["3", "challenger,champion"]
    assert table[1].split()[4:10] == ["0.9000", "0.8000", "0.4000", "0.7000", "linear_val_top1",
                                      "(passed)"]
    assert table[2].split()[4:8] == ["0.6500", "0.9900", "-", "-"]


def test_sweep_command(project: Path, sqlite_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    params = str(write_params(project, sqlite_uri))
    assert main(["sweep-runs", "--params", params, "--older-than", "0"]) == 0
    assert "marked 0 stale run(s) FAILED" in capsys.readouterr().out


@pytest.mark.slow
def test_concurrent_registrations_leave_consistent_aliases(project: Path, sqlite_uri: str) -> None:
    """Two `simclr register` processes at once: the better one ends champion, aliases agree."""
    cfg = make_cfg(sqlite_uri)
    params = str(write_params(project, sqlite_uri))
    scores = {"outputs_a": 0.60, "outputs_b": 0.80}
    for seed, (outputs, score) in enumerate(scores.items()):
        local = make_cfg(sqlite_uri, paths={"data": "data", "outputs": outputs})
        write_encoder(project, local, seed)
        write_metrics(project, "linear-eval", {"linear_val_top1": score}, outputs=outputs)
    # create the store first so both processes do not race on the schema migration
    from components.tracking.runs import Tracker

    Tracker.from_config(cfg)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-m", "components.stages.cli", "register",
                               "--params", params, "--set", f"paths.outputs={outputs}"],
                              cwd=project, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for outputs in scores]
    outputs_text = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs_text

    client = MlflowClient(sqlite_uri, sqlite_uri)
    versions = {str(v.version): v for v in client.search_model_versions("name = 'simclr-encoder'")}
    assert len(versions) == 2
    found = aliases(client)
    score_of = {v: version_metrics(client, mv)["linear_val_top1"] for v, mv in versions.items()}
    assert set(found.values()) <= set(versions)
    assert score_of[found["champion"]] == 0.80
    assert found.get("previous-champion") in (None, *[v for v, s in score_of.items() if s == 0.60])
    assert found.get("previous-champion") != found["champion"]
    for version, model_version in versions.items():  # gate tags agree with the aliases
        promoted = model_version.tags["gate"] == "passed"
        assert promoted == (version == found["champion"] or version == found.get(
            "previous-champion"))


def test_concurrent_gate_decisions_in_threads(tmp_path: Path, sqlite_uri: str,
                                             client: MlflowClient) -> None:
    """Four promotions racing in threads: the lock serialises them, the best ends champion."""
    import threading

    from components.config import GateConfig
    from components.tracking.registry import gate_and_promote, registry_lock
    from components.tracking.runs import Tracker

    client.create_registered_model("racing")
    scores = [0.55, 0.80, 0.65, 0.70]
    for score in scores:
        client.create_model_version("racing", source=str(tmp_path),
                                    tags={"metric.linear_val_top1": repr(score)})
    gate = GateConfig(metric="linear_val_top1", min_improvement=0.0)
    tracker = Tracker(client, client.tracking_uri, client.tracking_uri, "0")
    start, decisions = threading.Barrier(len(scores)), {}

    def promote(version: str) -> None:
        start.wait()
        decisions[version] = gate_and_promote(tracker, "racing", version, gate).passed

    threads = [threading.Thread(target=promote, args=(str(i + 1),)) for i in range(len(scores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found = aliases(client, "racing")
    assert found["champion"] == "2"  # 0.80
    assert found["previous-champion"] != "2" and decisions["2"] is True
    with registry_lock(tracker.registry_uri):  # released again after the race
        pass
