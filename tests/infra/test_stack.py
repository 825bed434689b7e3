"""The local multi-service stack (infra/stack.sh) for real: services, the pipeline through a Prefect
deployment, a Ray node killed during pretraining, and a teardown that leaves no process.

One stack for the module (about a minute to start on 2 cores). It runs on a throw-away project
copy (digits data) with its own state folder and ports, so a developer's `.stack/` is untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.project import FAST_DATA_PARAMS, ProjectCopy, make_project_copy

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
TRANSFER = "data.transfer=[{kind: digits, path: null, name: digits}]"  # the transfer stage needs one
PORTS = {"STACK_PG_PORT": "24432", "STACK_S3_PORT": "24333", "STACK_MLFLOW_PORT": "24500",
         "STACK_PREFECT_PORT": "24420", "STACK_RAY_PORT": "24379", "STACK_RAY_AGENT_PORT": "24365"}

if not (ROOT / "flows" / "pipeline.py").exists():  # only while the flow module is not there
    pytest.skip("flows/pipeline.py is missing: the stack runs the Prefect flow", allow_module_level=True)


class Stack:
    def __init__(self, project: ProjectCopy, state: Path):
        self.project, self.state = project, state
        self.env_vars = {**os.environ, **PORTS, "STACK_DIR": str(state),
                         "STACK_PROJECT_DIR": str(project.root), "STACK_VENV": sys.prefix}
        for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_ENDPOINT_URL"):
            self.env_vars.pop(key, None)  # the stack sets its own
        self.env: dict[str, str] = {}

    def sh(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.project.root / "infra/stack.sh"), *args], env=self.env_vars,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"stack.sh {' '.join(args)} exited {result.returncode}\n"
                                 f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
        return result

    def load_env(self) -> None:
        for line in self.sh("env").stdout.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            self.env[key] = value

    def client_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def marked_pids(self) -> list[int]:
        marker = f"SIMCLR_STACK_SERVICE={self.state}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker in (entry / "environ").read_bytes().split(b"\0"):
                        pids.append(int(entry.name))
                except OSError:
                    pass
        return pids

    def s3_keys(self, bucket: str, prefix: str = "") -> list[str]:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"],
                          aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        keys: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        return keys


@pytest.fixture(scope="module")
def stack():
    # short paths: Ray's Unix sockets live under the state folder (108-byte limit)
    base = Path(tempfile.mkdtemp(prefix="stk", dir="/tmp"))
    base.chmod(0o755)  # PostgreSQL runs as the `postgres` account when we are root
    project = make_project_copy(base / "p", FAST_DATA_PARAMS)
    stack = Stack(project, base / "s")
    try:
        started = time.monotonic()
        stack.sh("up", timeout=400)
        stack.up_seconds = time.monotonic() - started
        stack.load_env()
        yield stack
    finally:
        stack.sh("down", timeout=120, check=False)
        left = stack.marked_pids()
        shutil.rmtree(base, ignore_errors=True)  # postgres-owned files: removable by root
        assert not left, f"processes left behind: {left}"


def test_services_answer_on_loopback_with_postgres_backend(stack):
    status = stack.sh("status").stdout
    assert "mlflow: healthy" in status and "prefect: healthy" in status and "s3: healthy" in status
    assert status.count("ray node ") == 2, status  # head + worker node joined

    import psycopg2
    from mlflow import MlflowClient

    env = stack.client_env()
    assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    experiment = MlflowClient(env["MLFLOW_TRACKING_URI"]).create_experiment("stack-smoke")
    secrets = dict(line.split("=", 1) for line in (stack.state / "secrets.env").read_text().split())
    with psycopg2.connect(host="127.0.0.1", port=PORTS["STACK_PG_PORT"], dbname="mlflow", user="mlflow",
                          password=secrets["PG_MLFLOW_PASSWORD"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT name FROM experiments WHERE experiment_id = %s", (int(experiment),))
        assert cur.fetchone() == ("stack-smoke",)
    assert {"dvc-remote", "mlflow-artifacts", "ray-checkpoints"} <= set(
        (stack.state / "logs/buckets.log").read_text().removeprefix("buckets: ").strip().split(", "))
    # the services listen on loopback only (Ray's GCS binds all interfaces: see infra/README.md)
    import psutil

    listening = [c.laddr for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    for name, port in PORTS.items():
        if name in ("STACK_RAY_PORT", "STACK_RAY_AGENT_PORT"):
            continue
        hosts = {addr.ip for addr in listening if addr.port == int(port)}
        assert hosts == {"127.0.0.1"}, (name, port, hosts)


def test_pipeline_through_a_prefect_deployment(stack):
    run = stack.sh("run", "--preset", "tiny", "--set", TRANSFER, timeout=1200)
    assert "Completed" in run.stdout + run.stderr, run.stdout[-3000:]
    from mlflow import MlflowClient

    client = MlflowClient(stack.env["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions("name = 'simclr-encoder'")
    assert versions, f"no encoder version in the registry:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    version = versions[0]
    # artifacts of the registered version's run are in the object store (served by the proxy)
    assert any(version.run_id in key for key in stack.s3_keys("mlflow-artifacts")), version.run_id
    assert stack.s3_keys("dvc-remote", "files/md5/"), "dvc push sent nothing to s3://dvc-remote"
    assert any("checkpoint" in key for key in stack.s3_keys("ray-checkpoints")), "no Ray checkpoints in S3"
    # the training workers ran on both Ray nodes (actor table from the GCS)
    nodes = _train_worker_nodes(stack)
    assert len(nodes) == 2, nodes


def _train_worker_nodes(stack) -> set[str]:
    code = ("import ray\nfrom ray._private import state\nray.init(log_to_driver=False, logging_level='ERROR')\n"
            "print(sorted({a['Address']['NodeID'] for a in state.actors().values()"
            " if 'RayTrainWorker' in a['ActorClassName']}))")
    out = subprocess.run([sys.executable, "-c", code], env=stack.client_env(), capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return set(eval(out.strip().splitlines()[-1]))  # a printed list of hex ids


def test_killed_ray_node_during_pretraining_resumes_from_checkpoint(stack):
    """SIGKILL the second Ray node once a checkpoint exists, start it again: the run finishes,
    restarted from that checkpoint (metrics record resumed_from > 0)."""
    prefix = "kill-test"
    args = [str(Path(sys.prefix) / "bin/simclr"), "pretrain", "--preset", "tiny",
            "--set", "pretrain.epochs=10", "--set", f"ray.storage_path=s3://ray-checkpoints/{prefix}"]
    log = (stack.state / "kill-test.log").open("w")
    proc = subprocess.Popen(args, cwd=stack.project.root, env=stack.client_env(), stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not any("checkpoint" in k for k in stack.s3_keys("ray-checkpoints", prefix)):
            assert proc.poll() is None, (stack.state / "kill-test.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 600 s"
            time.sleep(1)
        worker_pids = [int(p) for p in (stack.state / "pids/ray-worker.pid").read_text().split()]
        for pid in worker_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        stack.sh("ray-worker", timeout=120)  # the node comes back (as a replaced node would)
        assert proc.wait(timeout=900) == 0, (stack.state / "kill-test.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    import json

    # run-varying numbers live in the untracked timings file, not in the DVC out metrics.json
    timings = json.loads((stack.project.root / "outputs/timings/pretrain.json").read_text())
    assert timings["resumed_from"] >= 1, timings


def test_down_leaves_no_process(stack):
    assert stack.marked_pids()
    stack.sh("down", timeout=120)
    assert stack.marked_pids() == []
