"""DVC over the data stages, in a real git repo with real local and S3 remotes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.project import FAST_DATA_PARAMS, ProjectCopy, make_project_copy

pytestmark = pytest.mark.slow
DATA_STAGES = ("ingest", "subsets")


def ran_stages(output: str) -> set[str]:
    return {stage for stage in ("ingest", "subsets", "pretrain") if f"Running stage '{stage}'" in output}


def manifest_hash(project: ProjectCopy) -> str:
    return json.loads((project.root / "data/datasets/digits/manifest.json").read_text())["content_hash"]


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> ProjectCopy:
    project = make_project_copy(tmp_path_factory.mktemp("dvc") / "project", FAST_DATA_PARAMS)
    first = project.dvc("repro", *DATA_STAGES)
    assert ran_stages(first.stdout) == {"ingest", "subsets"}
    project.commit("first repro")
    return project


def test_repro_writes_versioned_data_and_lock(project):
    lock = (project.root / "dvc.lock").read_text()
    assert "ingest:" in lock and "subsets:" in lock
    assert (project.root / "data/datasets/digits/manifest.json").is_file()
    subsets = json.loads((project.root / "data/subsets/manifest.json").read_text())
    assert subsets["content_hash"] == manifest_hash(project)
    tracked = project.run("git", "ls-files").stdout.split()
    assert "dvc.lock" in tracked and not any(name.startswith("data/") for name in tracked)


def test_second_repro_runs_nothing(project):
    second = project.dvc("repro", *DATA_STAGES)
    assert ran_stages(second.stdout) == set(), second.stdout
    assert project.dvc("status", *DATA_STAGES).stdout.strip().endswith("up to date.")


def test_param_change_reruns_only_downstream(project):
    before = manifest_hash(project)
    project.update_params({"subsets": {"seed": 1}})
    third = project.dvc("repro", *DATA_STAGES)
    assert ran_stages(third.stdout) == {"subsets"}, third.stdout
    assert manifest_hash(project) == before
    project.update_params({"subsets": {"seed": 0}})
    project.dvc("repro", *DATA_STAGES)  # back to the committed state for the tests below


def test_push_pull_round_trip_through_local_remote(project, tmp_path):
    remote = tmp_path / "remote"
    project.dvc("remote", "add", "--local", "-f", "-d", "scratch", str(remote))
    try:
        before = files_under(project.root / "data")
        project.dvc("push", *DATA_STAGES)
        assert any(remote.rglob("*")), "push wrote nothing to the remote"
        shutil.rmtree(project.root / "data")
        shutil.rmtree(project.root / ".dvc/cache")
        project.dvc("pull", *DATA_STAGES)
        assert files_under(project.root / "data") == before
    finally:
        project.dvc("remote", "remove", "--local", "scratch")


def test_tampered_remote_object_is_detected(project, tmp_path):
    remote = tmp_path / "remote"
    cache, backup = project.root / ".dvc/cache", tmp_path / "cache-backup"
    project.dvc("remote", "add", "--local", "-f", "-d", "scratch", str(remote))
    project.dvc("remote", "modify", "--local", "scratch", "verify", "true")
    manifest = project.root / "data/subsets/manifest.json"
    original = manifest.read_bytes()
    try:
        project.dvc("push", *DATA_STAGES)
        remote_objects = [path for path in remote.rglob("*") if path.is_file()
                          and path.read_bytes() == original]
        assert len(remote_objects) == 1
        remote_objects[0].chmod(0o644)
        remote_objects[0].write_bytes(original.replace(b'"seed"', b'"SEED"'))
        shutil.copytree(cache, backup)
        shutil.rmtree(cache)
        manifest.unlink()
        pulled = project.dvc("pull", *DATA_STAGES, check=False)
        assert pulled.returncode != 0
        assert not manifest.exists() or manifest.read_bytes() == original
    finally:
        project.dvc("remote", "remove", "--local", "scratch")
        shutil.rmtree(cache, ignore_errors=True)
        shutil.copytree(backup, cache)
        project.dvc("checkout", "--force", *DATA_STAGES)
        assert manifest.read_bytes() == original


@pytest.mark.s3
def test_push_pull_round_trip_through_s3(project, s3_server):
    bucket = "dvc-remote-test"
    s3_server.make_bucket(bucket)
    project.dvc("remote", "add", "--local", "-f", "-d", "team", f"s3://{bucket}/store")
    project.dvc("remote", "modify", "--local", "team", "endpointurl", s3_server.endpoint_url)
    try:
        before = files_under(project.root / "data")
        project.dvc("push", *DATA_STAGES)
        shutil.rmtree(project.root / "data")
        shutil.rmtree(project.root / ".dvc/cache")
        project.dvc("pull", *DATA_STAGES)
        assert files_under(project.root / "data") == before
    finally:
        project.dvc("remote", "remove", "--local", "team")


def test_exp_run_sets_a_param_and_reruns_its_stage(project):
    ran = project.dvc("exp", "run", "-S", "subsets.seed=3", "subsets")
    assert ran_stages(ran.stdout) == {"subsets"}, ran.stdout
    shown = json.loads(project.dvc("exp", "show", "--json").stdout)
    assert "seed" in json.dumps(shown) and '"seed": 3' in (project.root / "data/subsets/manifest.json").read_text()


@pytest.mark.ray
def test_dvc_repro_runs_every_stage_on_the_tiny_preset(tiny_dvc_repro, tmp_path):
    """The whole dvc.yaml on the tiny preset: results as DVC metrics and plots; a no-op rerun.
    (That the same params give the same dvc.lock md5s run again, through the flow, is checked
    by tests/flows/test_full_pipeline.py against this run.)"""
    from components.stage_api import STAGE_NAMES

    project, first = tiny_dvc_repro
    assert all(f"Running stage '{stage}'" in first for stage in STAGE_NAMES), first[-3000:]
    for stage in STAGE_NAMES:  # every stage writes its metrics through the runner
        assert (project.root / "outputs" / stage / "metrics.json").is_file(), stage
        assert (project.root / "outputs" / "timings" / f"{stage}.json").is_file(), stage
    outs = project.lock_outs()
    assert list(outs) == list(STAGE_NAMES) and all(outs.values())
    metrics = json.loads(project.dvc("metrics", "show", "--json").stdout)
    assert "linear_top1" in json.dumps(metrics) and "finetune_1pct_top1" in json.dumps(metrics)
    project.dvc("plots", "show", "-o", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").is_file()
    second = project.dvc("repro")  # only the source check runs (always_changed); nothing new
    assert [line for line in second.stdout.splitlines() if "Running stage" in line] == \
        ["Running stage 'fingerprint':"], second.stdout
    assert project.lock_outs() == outs
