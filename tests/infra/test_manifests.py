"""The production manifests (infra/docker, infra/k8s) parse, hold the required fields and agree with
each other and with the code's settings; no secret is written in them."""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
PIPELINE_SERVICES = {"mlflow", "prefect-server", "prefect-worker", "buckets"}


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "docker/compose.yaml").read_text())


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict]:
    docs = [doc for path in sorted((INFRA / "k8s").glob("*.yaml")) for doc in load_all(path)]
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def containers(doc: dict) -> list[dict]:
    if doc["kind"] == "RayCluster":
        groups = [doc["spec"]["headGroupSpec"], *doc["spec"]["workerGroupSpecs"]]
        return [c for g in groups for c in g["template"]["spec"]["containers"]]
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["spec"]["containers"]
    return []


def test_dockerfile_builds_cuda_image_from_the_lock_file():
    text = (INFRA / "docker/Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+", text, re.M)
    assert re.search(r"pip install .*-r requirements\.lock", text)
    assert re.search(r"pip install .*--no-deps -e \.", text)
    assert "USER simclr" in text  # not root at run time
    for copied in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies missing {copied}"


def test_one_image_name_everywhere(compose, k8s):
    tag = re.search(r"-t (\S+) \.", (INFRA / "docker/Dockerfile").read_text()).group(1)
    assert tag.endswith(":" + version("simclr-pipeline")) or tag.split(":")[1] == "0.1.0"
    assert compose["x-pipeline-image"] == "${SIMCLR_IMAGE:-" + tag + "}"
    for name in PIPELINE_SERVICES:
        assert compose["services"][name]["image"] == compose["x-pipeline-image"], name
    images = {c["image"] for doc in k8s.values() for c in containers(doc)}
    assert images == {tag}


def test_compose_services_ports_on_loopback_and_health(compose):
    services = compose["services"]
    assert {"postgres", "minio", "mlflow", "prefect-server", "prefect-worker"} <= services.keys()
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    for name in ("postgres", "minio", "mlflow", "prefect-server"):
        assert "healthcheck" in services[name], name
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "postgresql+psycopg2://" in mlflow_cmd and "--artifacts-destination s3://mlflow-artifacts" in mlflow_cmd
    db_url = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert db_url.startswith("postgresql+asyncpg://")


def _port_of(command: str) -> int:
    return int(re.search(r"--port[ =](\d+)", command).group(1))


def test_mlflow_and_prefect_ports_agree_between_compose_and_k8s(compose, k8s):
    services = compose["services"]
    config = k8s[("ConfigMap", "simclr-config")]["data"]
    mlflow_port = _port_of(" ".join(services["mlflow"]["command"]))
    assert services["mlflow"]["ports"] == [f"127.0.0.1:{mlflow_port}:{mlflow_port}"]
    assert urlparse(config["MLFLOW_TRACKING_URI"]).port == mlflow_port
    assert urlparse(services["prefect-worker"]["environment"]["MLFLOW_TRACKING_URI"]).port == mlflow_port
    (svc_port,) = k8s[("Service", "mlflow")]["spec"]["ports"]
    assert svc_port["port"] == mlflow_port
    (k8s_mlflow,) = containers(k8s[("Deployment", "mlflow")])
    assert _port_of(" ".join(k8s_mlflow["args"])) == mlflow_port

    prefect_port = _port_of(" ".join(services["prefect-server"]["command"]).replace("--port 4200", "--port=4200"))
    assert urlparse(config["PREFECT_API_URL"]).port == prefect_port
    assert urlparse(services["prefect-worker"]["environment"]["PREFECT_API_URL"]).port == prefect_port
    assert urlparse("ray://" + config["RAY_ADDRESS"]).port == 6379
    head = k8s[("RayCluster", "simclr-ray")]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"containerPort": 6379, "name": "gcs"} in head["ports"]


def test_work_pools_match_prefect_yaml(compose, k8s):
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    local_pools = {d["work_pool"]["name"] for d in deployments}
    assert "simclr-process" in local_pools
    worker_cmd = compose["services"]["prefect-worker"]["command"][-1]
    assert re.findall(r"--pool (\S+)", worker_cmd) == ["simclr-process"]
    assert "work-pool create simclr-process --type process" in worker_cmd
    stack = (INFRA / "stack.sh").read_text()
    assert "WORK_POOL=${STACK_WORK_POOL:-simclr-process}" in stack
    (k8s_worker,) = containers(k8s[("Deployment", "prefect-worker")])
    assert re.findall(r"--pool (\S+)", " ".join(k8s_worker["args"])) == ["simclr-k8s"]


def test_raycluster_has_head_and_gpu_workers(k8s):
    cluster = k8s[("RayCluster", "simclr-ray")]
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["spec"]["rayVersion"] == version("ray")
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (gpu,) = cluster["spec"]["workerGroupSpecs"]
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    (worker,) = gpu["template"]["spec"]["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert gpu["rayStartParams"]["num-gpus"] == worker["resources"]["limits"]["nvidia.com/gpu"]


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.I)
LITERAL_SECRETS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}"),
    re.compile(r"://[^:/\s$]+:(?!\$|\.\.\.@)[^@\s$]+@"),  # user:password@ in a URL, not ${VAR} or ...
    re.compile(r"(?i)password\s*(=|:\s)\s*['\"]?(?![$'\"]|\s|\{|:|\(|\?)[^\s'\"]{4,}"),
]


def _env_entries(doc: dict):
    for c in containers(doc):
        yield from c.get("env", [])


def test_no_literal_secrets(compose, k8s):
    files = [p for p in INFRA.rglob("*") if p.is_file() and p.suffix in {".yaml", ".sh", ".py", ""}]
    files.append(INFRA / "docker/Dockerfile")
    for path in files:
        text = path.read_text()
        for pattern in LITERAL_SECRETS:
            hit = pattern.search(text)
            assert hit is None, f"{path.relative_to(ROOT)}: literal secret? {hit.group(0)!r}"
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+(:\?[^}]*)?\}", str(value)), f"compose {name}.{key} = {value!r}"
    for doc in k8s.values():
        for entry in _env_entries(doc):
            if SECRET_NAME.search(entry["name"]) or "URI" in entry["name"] and "BACKEND" in entry["name"]:
                assert "secretKeyRef" in entry.get("valueFrom", {}), entry
        if doc["kind"] == "ConfigMap":
            assert not [k for k in doc["data"] if SECRET_NAME.search(k)]


def test_stack_script_is_valid_bash_and_binds_loopback():
    subprocess.run(["bash", "-n", str(INFRA / "stack.sh")], check=True)
    text = (INFRA / "stack.sh").read_text()
    assert "--host 127.0.0.1" in text and "listen_addresses=127.0.0.1" in text
    assert "-ip.bind=127.0.0.1" in text and "--node-ip-address=127.0.0.1" in text
