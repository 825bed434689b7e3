"""Session-wide fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.project import ProjectCopy, make_project_copy, tiny_params
from tests.s3_server import S3Server, running_s3_server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (SeaweedFS) on loopback, started once per session.

    While it runs, ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
    ``AWS_DEFAULT_REGION`` point at it (restored afterwards), so plain ``boto3.client("s3")``,
    MLflow, DVC and Ray workers started later all use it. ``s3_server.make_bucket(name)``
    creates a bucket; ``s3_server.env(denied=True)`` gives credentials the server refuses.
    """
    with running_s3_server(tmp_path_factory.mktemp("seaweedfs")) as server, \
            pytest.MonkeyPatch.context() as env:
        env.delenv("AWS_PROFILE", raising=False)
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        for name, value in server.env().items():
            env.setenv(name, value)
        yield server


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(scope="session")
def fashion_mnist_dataset(tmp_path_factory: pytest.TempPathFactory):
    """The real Fashion-MNIST files ingested once per session (about 3 s).

    Returns the :class:`CanonicalDataset` at ``<tmp>/data/datasets/fashion-mnist`` (the
    layout of ``StagePaths`` with ``paths.data = <tmp>/data``). Treat it as read-only.
    """
    from pathlib import Path

    from components.config import SourceConfig
    from components.data.sources import ingest_sources

    source = SourceConfig(kind="idx", path=FASHION_MNIST_DIR, name="fashion-mnist",
                          classes=FASHION_MNIST_CLASSES)
    root = tmp_path_factory.mktemp("fashion-mnist") / "data" / "datasets" / "fashion-mnist"
    if not Path(FASHION_MNIST_DIR).is_dir():
        pytest.skip(f"{FASHION_MNIST_DIR} not installed")
    (dataset,) = ingest_sources([(source, root)], shard_size=10_000, split_seed=0)
    return dataset


@pytest.fixture(scope="session")
def session_tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite MLflow store for CLI tests of the whole session (creating one costs ~10 s)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def tiny_dvc_repro(tmp_path_factory: pytest.TempPathFactory) -> tuple[ProjectCopy, str]:
    """``dvc repro`` of every stage on the tiny preset in a project copy: ``(project, stdout)``.

    Shared because a whole run costs minutes here: the DVC tests read its results, and the flow
    test checks that ``python -m flows`` on the same params writes the same dvc.lock md5s.
    """
    project = make_project_copy(tmp_path_factory.mktemp("tiny-dvc") / "project", tiny_params())
    return project, project.dvc("repro", timeout=1200).stdout
