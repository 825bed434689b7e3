"""`simclr verify-remote` and `simclr pull` against a real local DVC remote with a corrupted object."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.project import FAST_DATA_PARAMS, VENV_BIN, ProjectCopy, make_project_copy

pytestmark = pytest.mark.slow
DATA_STAGES = ("ingest", "subsets")


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> ProjectCopy:
    project = make_project_copy(tmp_path_factory.mktemp("verify") / "project", FAST_DATA_PARAMS)
    project.dvc("repro", *DATA_STAGES)
    project.dvc("push")  # the project's default remote: <project>/dvc-remote, verify = true
    return project


def simclr(project: ProjectCopy, *args: str):
    return project.run(str(VENV_BIN / "simclr"), *args, check=False)


def test_corrupted_object_is_named_refused_by_pull_and_repaired(project, tmp_path):
    clean = simclr(project, "verify-remote")
    assert clean.returncode == 0 and " 0 bad" in clean.stdout, clean.stdout + clean.stderr

    manifest = project.root / "data/subsets/manifest.json"
    original = manifest.read_bytes()
    (remote_object,) = [path for path in (project.root / "dvc-remote").rglob("*")
                        if path.is_file() and path.read_bytes() == original]
    remote_object.chmod(0o644)
    remote_object.write_bytes(original.replace(b'"seed"', b'"SEED"'))

    found = simclr(project, "verify-remote")
    assert found.returncode == 2
    assert f"{remote_object} (data/subsets/manifest.json): corrupted" in found.stdout
    assert found.stderr.startswith("error: ") and len(found.stderr.strip().splitlines()) == 1
    assert "--repair" in found.stderr

    cache, backup = project.root / ".dvc/cache", tmp_path / "cache"
    shutil.move(cache, backup)
    shutil.rmtree(project.root / "data/subsets")
    try:
        pulled = simclr(project, "pull", "subsets")
        assert pulled.returncode == 2
        assert "data/subsets/manifest.json" in pulled.stderr and str(remote_object) in pulled.stderr
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.move(backup, cache)
        project.dvc("checkout", "--force", *DATA_STAGES)

    repaired = simclr(project, "verify-remote", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired 1 object(s)" in repaired.stdout
    assert remote_object.read_bytes() == original
    assert " 0 bad" in simclr(project, "verify-remote").stdout

    before = files_under(project.root / "data")
    shutil.rmtree(cache)
    shutil.rmtree(project.root / "data")
    project.dvc("pull", *DATA_STAGES)
    assert files_under(project.root / "data") == before


@pytest.mark.s3
def test_corrupted_s3_object_is_found_and_repaired(project, s3_server):
    import hashlib

    bucket = "dvc-verify-test"
    s3_server.make_bucket(bucket)
    project.dvc("remote", "add", "--local", "-f", "-d", "team", f"s3://{bucket}/store")
    project.dvc("remote", "modify", "--local", "team", "endpointurl", s3_server.endpoint_url)
    try:
        project.dvc("push", *DATA_STAGES)
        original = (project.root / "data/subsets/manifest.json").read_bytes()
        md5 = hashlib.md5(original).hexdigest()  # noqa: S324 - DVC's object name
        key = f"store/files/md5/{md5[:2]}/{md5[2:]}"
        client = s3_server.client()
        client.put_object(Bucket=bucket, Key=key, Body=original.replace(b'"seed"', b'"SEED"'))

        found = simclr(project, "verify-remote")
        assert found.returncode == 2
        assert f"{bucket}/{key} (data/subsets/manifest.json): corrupted" in found.stdout, found.stdout
        repaired = simclr(project, "verify-remote", "--repair")
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == original
    finally:
        project.dvc("remote", "remove", "--local", "team")
