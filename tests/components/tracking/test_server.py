"""The same tracking and registry code against a real ``mlflow server`` on loopback whose
artifacts live in an S3-compatible server (SeaweedFS, the session's ``s3_server`` fixture)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from components.models.checkpoint import load_encoder
from components.tracking.registry import load_encoder_from_registry
from components.tracking.runs import end_pipeline_run, start_pipeline_run, tracked_stage
from tests.components.tracking.helpers import (
    CHANNELS,
    IMAGE_SIZE,
    aliases,
    make_cfg,
    pretrain_stage,
    write_encoder,
    write_metrics,
)
from tests.s3_server import free_ports

pytestmark = [pytest.mark.s3, pytest.mark.slow]
BUCKET = "mlflow-artifacts"
START_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def mlflow_server(s3_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` with a sqlite backend, proxying artifacts to s3://mlflow-artifacts/."""
    s3_server.make_bucket(BUCKET)
    workdir = tmp_path_factory.mktemp("mlflow-server")
    (port,) = free_ports(1)
    command = [str(Path(sys.executable).parent / "mlflow"), "server",
               "--backend-store-uri", f"sqlite:///{workdir / 'server.db'}",
               "--artifacts-destination", f"s3://{BUCKET}/artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:  # the AWS_* variables of s3_server are inherited
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                   stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_pipeline_against_server_with_s3_artifacts(mlflow_server: str, project: Path,
                                                   s3_server) -> None:
    from components.stages.runner import run_stage

    cfg = make_cfg(mlflow_server, registry={"model_name": "server-encoder"})
    client = MlflowClient(mlflow_server, mlflow_server)
    write_encoder(project, cfg, seed=0)
    write_metrics(project, "linear-eval", {"linear_val_top1": 0.7, "transfer_digits_val_top1": 0.9})

    parent = start_pipeline_run(cfg)
    tracked_stage(cfg, "pretrain", pretrain_stage(project), parent_run_id=parent)
    result = run_stage(cfg, "register", parent_run_id=parent)
    end_pipeline_run(parent, "FINISHED", cfg=cfg)

    assert result.metrics["promoted"] == 1.0
    assert aliases(client, "server-encoder") == {"champion": "1", "challenger": "1"}
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'")
    assert {r.info.run_name for r in children} == {"pretrain", "register"}
    assert all(r.info.status == "FINISHED" for r in children)

    # artifacts really are in the bucket (run outputs and the logged models)
    keys = [obj["Key"] for page in s3_server.client().get_paginator("list_objects_v2")
            .paginate(Bucket=BUCKET) for obj in page.get("Contents", [])]
    assert any(key.endswith("outputs/encoder.pt") for key in keys)
    assert any(key.endswith("artifacts/encoder.pt") for key in keys)  # pyfunc's checkpoint
    assert any(key.endswith("MLmodel") for key in keys)

    encoder = load_encoder_from_registry("models:/server-encoder@champion",
                                         tracking_uri=mlflow_server)
    original, _ = load_encoder(project / "outputs" / "pretrain" / "encoder.pt")
    x = torch.rand(3, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.allclose(encoder(x), original.eval()(x), atol=1e-6)

    # a second, worse candidate stays challenger (compare-and-set path: no file lock on http)
    write_encoder(project, cfg, seed=1)
    write_metrics(project, "linear-eval", {"linear_val_top1": 0.6, "transfer_digits_val_top1": 0.9})
    refused = run_stage(cfg, "register")
    assert refused.metrics["promoted"] == 0.0
    assert aliases(client, "server-encoder") == {"champion": "1", "challenger": "2"}
