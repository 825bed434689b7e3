"""The Ray Train driver with real Ray workers on a 512-image slice of Fashion-MNIST.

All Ray tests of this module share one Ray instance (conftest.py, 2 CPUs); each ``fit()`` costs about
15-25 s of Ray overhead here, so the tests reuse one reference run where they can.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import PipelineConfig
from components.errors import ConfigError
from components.models.simclr import build_simclr_model
from components.training.checkpointing import (
    STATE_FILE,
    TrainingState,
    capture_rng,
    load_training_state,
    restore_rng,
    save_training_state,
)
from components.training.local_runner import run_local_pretraining
from components.training.ray_driver import PretrainOutcome, run_name_for, run_pretraining
from tests.components.training.conftest import digits_config, tiny_config
from tests.components.training.hooks import CrashOnce
from tests.s3_server import S3Server

ROOT = Path(__file__).resolve().parents[3]


def _dataset(cfg: PipelineConfig) -> Path:
    return Path(cfg.paths.data) / "datasets" / cfg.data.source.name


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                       atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------- no Ray needed
def test_training_state_round_trip_and_rng(tmp_path: Path) -> None:
    torch.manual_seed(1)
    rng = capture_rng()
    expected = (torch.rand(3), np.random.rand(3))
    state = TrainingState(model={"w": torch.ones(2)}, optimizer={"state": {}, "param_groups": []},
                          step=12, epoch=3, config={"seed": 0}, history=[{"epoch": 1}], rng=rng)
    save_training_state(tmp_path, state)
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temporary file left
    loaded = load_training_state(tmp_path)
    assert (loaded.step, loaded.epoch, loaded.history) == (12, 3, [{"epoch": 1}])
    restore_rng(loaded.rng)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])


def test_run_name_is_deterministic_and_tracks_training_parameters(
        fmnist_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(fmnist_root, tmp_path)
    same = tiny_config(fmnist_root, tmp_path / "elsewhere")  # other storage: same run
    other = tiny_config(fmnist_root, tmp_path, pretrain={"temperature": 0.2})
    monitoring = tiny_config(fmnist_root, tmp_path, pretrain={"knn_every": 7},
                             ray={"num_workers": 1})
    assert run_name_for(cfg, "abc" * 10) == run_name_for(same, "abc" * 10)
    assert run_name_for(cfg, "abc" * 10) == run_name_for(monitoring, "abc" * 10)
    assert run_name_for(cfg, "abc" * 10) != run_name_for(other, "abc" * 10)
    assert run_name_for(cfg, "abc" * 10) != run_name_for(cfg, "abd" * 10)


def test_batch_not_divisible_by_workers_is_a_config_error(fmnist_root: Path,
                                                         tmp_path: Path) -> None:
    """Rejected when the config is validated, before Ray or any MLflow run starts."""
    with pytest.raises(ConfigError, match="pretrain.batch_size"):
        tiny_config(fmnist_root, tmp_path, pretrain={"batch_size": 63})


# ----------------------------------------------------------------------------- real Ray
@pytest.fixture(scope="module")
def reference(ray_session: str, fmnist_root: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineConfig, PretrainOutcome]:
    """An uninterrupted 2-worker run (3 epochs x 8 steps of 64 images)."""
    cfg = tiny_config(fmnist_root, tmp_path_factory.mktemp("reference"))
    return cfg, run_pretraining(cfg, _dataset(cfg))


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_learn_and_checkpoint_every_epoch(
        reference: tuple[PipelineConfig, PretrainOutcome]) -> None:
    cfg, outcome = reference
    history = outcome.history
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert [row["step"] for row in history] == [8, 16, 24]
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(row["resumed_from"] == 0 for row in history)
    assert all(0.0 <= row["pretrain_monitor_knn_top1"] <= 1.0 for row in history)
    assert all(row["images_per_s"] > 0 for row in history)
    run_dir = Path(cfg.ray.storage_path) / outcome.run_name
    checkpoints = sorted(p.name for p in run_dir.glob("epoch-*"))
    assert checkpoints == ["epoch-00002", "epoch-00003"]  # num_to_keep=2
    assert Path(outcome.checkpoint_path) == run_dir / "epoch-00003"
    assert any(key.startswith("encoder.") for key in outcome.model_state)
    assert any(key.startswith("head.") for key in outcome.model_state)


@pytest.mark.ray
@pytest.mark.slow
def test_a_local_instance_starts_no_preemption_watcher(
        reference: tuple[PipelineConfig, PretrainOutcome]) -> None:
    """The one node of a local instance is this machine: no actor watches it being drained."""
    from ray._private import state

    classes = {actor["ActorClassName"] for actor in state.actors().values()}
    assert any("TrainController" in name for name in classes), classes
    assert not any("PreemptionWatcher" in name for name in classes), classes


@pytest.mark.ray
@pytest.mark.slow
def test_worker_killed_mid_run_resumes_from_checkpoint_to_the_same_result(
        reference: tuple[PipelineConfig, PretrainOutcome], fmnist_root: Path,
        tmp_path: Path) -> None:
    """Rank 1 calls os._exit(1) once (a test hook), right after the epoch-1 checkpoint. The group restarts
    from that checkpoint and, because LR schedule, data order and augmentation streams are
    functions of (seed, step, epoch), ends with the uninterrupted run's parameters."""
    ref_cfg, ref = reference
    cfg = tiny_config(fmnist_root, tmp_path)
    assert cfg.digest("pretrain", "model") == ref_cfg.digest("pretrain", "model")
    marker = tmp_path / "crashed-once"
    outcome = run_pretraining(cfg, _dataset(cfg), hooks=[CrashOnce(marker, after_epoch=1)])
    assert marker.exists()
    assert [row["epoch"] for row in outcome.history] == [1, 2, 3]
    assert [row["resumed_from"] for row in outcome.history] == [0, 1, 1]
    assert [row["step"] for row in outcome.history] == [8, 16, 24]
    _assert_same_state(outcome.model_state, ref.model_state, atol=1e-5)


# Parameters of 1 worker x B and 2 workers x B/2 agree to this after 8 LARS steps (fp32). The
# gap is summation order (gloo's all-reduces, the BN sums split in two): 1 ulp (1.2e-7) after
# one step, about 2.5e-6 after 8 steps at base_lr 0.3 (measured); a much larger lr amplifies
# it (1e-4 at base_lr 1.0, where the loss already oscillates).
EQUIVALENCE_ATOL = 1e-4


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_with_global_bn_train_like_one_worker_with_the_whole_batch(
        ray_session: str, digits_root: Path, tmp_path: Path) -> None:
    """1 worker x 64 images (the single-process runner: the same loop, world 1) against 2 Ray
    workers x 32, BatchNorm in TRAIN mode: with global BN (the default) the loss of every
    epoch and all parameters and BN buffers after 8 LARS steps agree within EQUIVALENCE_ATOL;
    with ``model.global_bn=false`` (each worker normalises its own half) they do not.

    Also compared: the gathered NT-Xent, DDP's gradient averaging, the sampler (the global
    batch is the same images whatever the world size), LARS and the schedule. The views are
    made split-independent with an identity augmentation (full-image crop, no flip, jitter,
    greyscale or blur), because the augmentation stream is per rank; the two views are then
    equal, which still gives a non-trivial loss (the negatives differ) and moves every weight.
    """
    identity_augment = {"crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "flip_p": 0.0,
                        "jitter_p": 0.0, "grayscale_p": 0.0, "blur": "off"}
    pretrain = {"epochs": 4, "max_images": 128, "knn_every": 0, "checkpoint_every": 4,
                "optim": {"warmup_epochs": 0, "base_lr": 0.3}}

    def config(workers: int, global_bn: bool) -> PipelineConfig:
        return digits_config(digits_root, tmp_path / f"w{workers}-{global_bn}",
                             augment=identity_augment, pretrain=pretrain,
                             ray={"num_workers": workers}, model={"global_bn": global_bn})

    one = run_local_pretraining(config(1, True), _dataset(config(1, True)))
    two = run_pretraining(config(2, True), _dataset(config(2, True)))
    local_bn = run_pretraining(config(2, False), _dataset(config(2, False)))
    for outcome in (one, two, local_bn):
        assert [row["step"] for row in outcome.history] == [2, 4, 6, 8]

    cfg = config(1, True)
    torch.manual_seed(cfg.seed)  # the initial weights of every runner
    initial = build_simclr_model(cfg.model, in_channels=1, image_size=8).state_dict()
    moved = max(float((one.model_state[k] - v).abs().max()) for k, v in initial.items()
                if v.is_floating_point())
    assert moved > 1e-2  # training moved the weights far beyond the tolerance
    losses = [[row["loss"] for row in o.history] for o in (one, two, local_bn)]
    torch.testing.assert_close(losses[1], losses[0], atol=EQUIVALENCE_ATOL, rtol=0)
    _assert_same_state(two.model_state, one.model_state, atol=EQUIVALENCE_ATOL)

    def max_gap(state: dict[str, torch.Tensor]) -> float:
        return max(float((state[k] - v).abs().max()) for k, v in one.model_state.items()
                   if v.is_floating_point())

    gap = max_gap(local_bn.model_state)
    print(f"max |param diff| vs 1 worker: global BN {max_gap(two.model_state):.2e}, "
          f"local BN {gap:.2e}; weights moved {moved:.2e}")
    assert gap > 10 * EQUIVALENCE_ATOL, "local BN should train differently from global BN"
    assert max(abs(a - b) for a, b in zip(losses[2], losses[0], strict=True)) > EQUIVALENCE_ATOL


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.s3
def test_checkpoints_on_s3_compatible_storage(
        ray_session: str, s3_server: S3Server, fmnist_root: Path, tmp_path: Path) -> None:
    """storage_path=s3://bucket/prefix on a loopback S3 server; a rerun resumes from there."""
    s3_server.make_bucket("ray-ckpt")  # the fixture also sets AWS_ENDPOINT_URL and credentials
    cfg = tiny_config(fmnist_root, tmp_path, pretrain={"epochs": 2, "knn_every": 0},
                      ray={"storage_path": "s3://ray-ckpt/runs"})
    outcome = run_pretraining(cfg, _dataset(cfg))
    assert outcome.checkpoint_path.endswith(f"{outcome.run_name}/epoch-00002")
    keys = [obj["Key"] for obj in s3_server.client().list_objects_v2(
        Bucket="ray-ckpt", Prefix=f"runs/{outcome.run_name}/")["Contents"]]
    assert f"runs/{outcome.run_name}/epoch-00002/{STATE_FILE}" in keys
    again = run_pretraining(cfg, _dataset(cfg))  # finished run: resumes, trains nothing
    assert again.history == outcome.history
    _assert_same_state(again.model_state, outcome.model_state, atol=0)


@pytest.mark.ray
@pytest.mark.slow
def test_a_local_instance_starts_without_its_auth_notice_and_with_the_coordinator_up() -> None:
    """Ray's token auth stays on without its every-run notice, and Ray Train's autoscaling
    coordinator is running before any fit (a 2-core machine often starts it too slowly for the
    controller's 5 s request timeout: a 17-line traceback in every run's log)."""
    from tests.project import tiny_params

    script = textwrap.dedent(f"""
        import ray
        from ray._private import state
        from components.config import config_from_dict
        from components.training.ray_driver import connect_ray
        connect_ray(config_from_dict({tiny_params()!r}))
        print("ACTORS", sorted((a["ActorClassName"], a["State"]) for a in state.actors().values()))
        ray.shutdown()
    """)
    env = {key: value for key, value in os.environ.items()
           if key not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "('_AutoscalingCoordinatorActor', 'ALIVE')" in proc.stdout, proc.stdout[-3000:]
    assert "Token authentication" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.ray
@pytest.mark.slow
def test_separately_started_cluster_via_ray_address(fmnist_root: Path, tmp_path: Path) -> None:
    """`ray start --head` on loopback, then a fresh process with only RAY_ADDRESS set trains there.

    The head runs with ``--block`` in its own process group and is stopped by signalling that
    group: ``ray stop`` would kill EVERY Ray process of this user (the module's instance of
    these tests and anyone else's). Token auth is disabled for this loopback-only cluster.
    """
    ray_bin = Path(sys.executable).parent / "ray"
    port = _free_port()
    env = {**os.environ, "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
           "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    temp_dir = Path("/tmp") / f"ray-test-{os.getpid()}"  # Ray's socket paths must stay short
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        cfg = tiny_config(fmnist_root, tmp_path, pretrain={"epochs": 1, "knn_every": 0})
        script = textwrap.dedent(f"""
            import ray
            from components.config import config_from_dict
            from components.training.ray_driver import run_pretraining
            cfg = config_from_dict({cfg.model_dump(mode="json")!r})
            out = run_pretraining(cfg, {str(_dataset(cfg))!r})
            print("RESULT", out.history[-1]["epoch"], ray.cluster_resources()["CPU"],
                  ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])
        """)
        proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                              text=True, timeout=240,
                              env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"})
        result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
        assert proc.returncode == 0 and result, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert result[0].split()[1:] == ["1", "2.0", str(port)]
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` drains and stops its processes
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
