"""``git_state`` in a real git repo: what the pipeline writes does not make the tree dirty."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from components.config import config_from_dict
from components.tracking.lineage import changed_paths, git_state, lineage_tags
from tests.project import GIT_IDENTITY


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(root), **GIT_IDENTITY}).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A clean checkout that tracks a source file, dvc.lock and (wrongly) a file under outputs/."""
    (tmp_path / "components").mkdir()
    (tmp_path / "components" / "code.py").write_text("x = 1\n")
    (tmp_path / "outputs" / "ingest").mkdir(parents=True)
    (tmp_path / "outputs" / "ingest" / "metrics.json").write_text("{}\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "clean")
    return tmp_path


def test_a_clean_checkout_is_clean_after_the_pipeline_wrote_its_files(repo: Path):
    cfg = config_from_dict({"paths": {"data": "data", "outputs": "outputs"}})
    assert lineage_tags(cfg, repo)["git_dirty"] == "false"
    # what a run does: DVC rewrites dvc.lock and stages it (autostage), outputs change, the run
    # lock and an untracked data folder appear
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    git(repo, "add", "dvc.lock")
    (repo / "outputs" / "ingest" / "metrics.json").write_text('{"n": 1}\n')
    (repo / ".simclr-run.lock").write_text("{}")
    (repo / "data").mkdir()
    (repo / "data" / "x").write_text("1")
    tags = lineage_tags(cfg, repo)
    assert tags["git_dirty"] == "false"
    assert tags["git_commit"] == git(repo, "rev-parse", "HEAD").strip()
    assert git_state(repo, ())["git_dirty"] == "true"  # git itself does see the changes


@pytest.mark.parametrize("change", ["code", "params", "staged rename"])
def test_a_change_to_the_source_or_params_is_dirty(repo: Path, change: str):
    cfg = config_from_dict({})
    if change == "code":
        (repo / "components" / "code.py").write_text("x = 2\n")
    elif change == "params":
        (repo / "params.yaml").write_text("seed: 1\n")
    else:
        git(repo, "mv", "components/code.py", "components/renamed.py")
    assert lineage_tags(cfg, repo)["git_dirty"] == "true"


def test_changed_paths_reads_renames():
    assert changed_paths(" M a.py\0R  new.py\0old.py\0") == ["a.py", "new.py", "old.py"]
