"""Where a run's inputs came from: git commit, DVC stage hashes, data content hashes, Prefect run.

Every function here is read-only and cheap (no imports of Prefect unless it is already loaded) and
returns ``{}`` rather than failing when a piece of lineage is simply absent (no git, no dvc.lock).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.config import PipelineConfig
from components.run_lock import LOCK_FILE as RUN_LOCK_FILE
from components.stage_api import StagePaths

DVC_LOCK = "dvc.lock"
PARAMS_FILE = "params.yaml"


# What a run itself writes into the checkout; a change there does not make the tree "dirty":
# dvc.lock (DVC's autostage puts it into git's index), the run and registry locks, DVC's plots.
PIPELINE_WRITTEN = (DVC_LOCK, RUN_LOCK_FILE, "dvc_plots", "mlflow.registry-lock")


def git_state(root: Path, pipeline_paths: tuple[str, ...] = PIPELINE_WRITTEN) -> dict[str, str]:
    """``{"git_commit": sha, "git_dirty": "true"|"false"}`` of the repo holding ``root``; {} if none.

    Dirty means a tracked file other than what the pipeline writes (``pipeline_paths``: files, or
    folders with everything under them, relative to ``root``) differs from the commit.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=30, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=no",
                                 "--", "."], cwd=root, capture_output=True, text=True,
                                timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit,
            "git_dirty": str(any(not _written_by_pipeline(path, pipeline_paths)
                                 for path in changed_paths(status))).lower()}


def changed_paths(porcelain_z: str) -> list[str]:
    """The paths of ``git status --porcelain -z`` output (both sides of a rename)."""
    entries = porcelain_z.split("\0")
    paths: list[str] = []
    index = 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if len(entry) < 4:
            continue
        paths.append(entry[3:])
        if entry[0] in "RC":  # a rename or copy: the source path is the next entry
            paths.append(entries[index])
            index += 1
    return paths


def _written_by_pipeline(path: str, pipeline_paths: tuple[str, ...]) -> bool:
    return any(path == written or path.startswith(f"{written.rstrip('/')}/")
               for written in pipeline_paths)


def dvc_stage_hashes(lock_file: Path) -> dict[str, str]:
    """One short hash per stage in ``dvc.lock`` (its cmd, deps, params and outs): ``dvc.<stage>``."""
    if not lock_file.is_file():
        return {}
    try:
        lock = yaml.safe_load(lock_file.read_text()) or {}
    except yaml.YAMLError:
        return {}
    stages = lock.get("stages", {}) if isinstance(lock, dict) else {}
    return {f"dvc.{name}": _short_hash(entry) for name, entry in sorted(stages.items())}


def data_manifests(cfg: PipelineConfig, root: Path) -> list[Path]:
    """Manifests of the canonical, transfer and subset data present under ``root / cfg.paths.data``."""
    paths = StagePaths.of(cfg)
    candidates = [paths.dataset(cfg.data.source) / "manifest.json"]
    candidates += [paths.transfer_dataset(source) / "manifest.json" for source in cfg.data.transfer]
    candidates.append(paths.subsets / "manifest.json")
    return [root / path for path in candidates if (root / path).is_file()]


def data_hashes(cfg: PipelineConfig, root: Path) -> dict[str, str]:
    """``data.<name>.content_hash`` for each data manifest present (subsets: ``data.subsets.hash``)."""
    tags: dict[str, str] = {}
    for manifest in data_manifests(cfg, root):
        try:
            content = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if manifest.parent.name == "subsets":
            tags["data.subsets.hash"] = _short_hash(content)
        elif "content_hash" in content:
            tags[f"data.{manifest.parent.name}.content_hash"] = str(content["content_hash"])
    return tags


def prefect_flow_run_id() -> str | None:
    """The enclosing Prefect flow run's id, read only when Prefect is already loaded or exported it."""
    if "prefect" in sys.modules:
        try:
            from prefect.runtime import flow_run

            run_id = flow_run.id
        except Exception:  # noqa: BLE001 - lineage must never break a stage
            run_id = None
        if run_id:
            return str(run_id)
    return os.environ.get("PREFECT__FLOW_RUN_ID") or None


def lineage_tags(cfg: PipelineConfig, root: Path) -> dict[str, str]:
    """Every lineage tag for a run started from ``root`` (the project directory)."""
    written = (*PIPELINE_WRITTEN, *(_relative(Path(p), root) for p in (cfg.paths.data, cfg.paths.outputs)))
    tags = {**git_state(root, written), **dvc_stage_hashes(root / DVC_LOCK), **data_hashes(cfg, root)}
    tags["params_digest"] = cfg.digest()
    flow_run_id = prefect_flow_run_id()
    if flow_run_id:
        tags["prefect_flow_run_id"] = flow_run_id
    return tags


def lineage_files(cfg: PipelineConfig, root: Path) -> list[tuple[Path, str]]:
    """Files worth attaching to a run as lineage, each with its artifact folder: params.yaml and
    dvc.lock in ``lineage/``, each data manifest under its own folder in ``lineage/manifests/``
    (``lineage/manifests/datasets/fashion-mnist/manifest.json``: they share a file name)."""
    files = [(root / name, "lineage") for name in (PARAMS_FILE, DVC_LOCK)]
    data = root / cfg.paths.data
    files += [(path, f"lineage/manifests/{_relative(path.parent, data)}")
              for path in data_manifests(cfg, root)]
    return [(path, folder) for path, folder in files if path.is_file()]


# MLflow system tags (what its UI shows as Source and Git commit), beside the custom git_* tags
SOURCE_NAME, SOURCE_TYPE = "mlflow.source.name", "mlflow.source.type"
GIT_COMMIT, GIT_BRANCH, GIT_REPO_URL = ("mlflow.source.git.commit", "mlflow.source.git.branch",
                                        "mlflow.source.git.repoURL")


def source_tags(root: Path, source_name: str, source_type: str = "LOCAL") -> dict[str, str]:
    """``mlflow.source.*`` tags of a run started from ``root``: what ran (``source_name``, e.g.
    ``simclr pretrain``), its type, and the git commit, branch and remote URL when known."""
    tags = {SOURCE_NAME: source_name, SOURCE_TYPE: source_type}
    for key, args in ((GIT_COMMIT, ["rev-parse", "HEAD"]),
                      (GIT_BRANCH, ["rev-parse", "--abbrev-ref", "HEAD"]),
                      (GIT_REPO_URL, ["config", "--get", "remote.origin.url"])):
        try:
            value = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                   timeout=30, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if value and value != "HEAD":  # a detached HEAD has no branch
            tags[key] = value
    return tags


# ----------------------------------------------------------------------------- datasets read
DIGEST_LENGTH = 32  # MLflow keeps at most 36 characters of a dataset digest
# What each tracked stage reads: "train"/"test" splits of the canonical source data set,
# "subsets" (the label subsets and validation split), "transfer" (each transfer data set).
STAGE_READS: dict[str, tuple[str, ...]] = {
    "subsets": ("train",),
    "pretrain": ("train",),
    "linear-eval": ("train", "test", "subsets"),
    "finetune": ("train", "test", "subsets"),
    "baselines": ("train", "test", "subsets"),
    "transfer": ("train", "subsets", "transfer"),
}


@dataclass(frozen=True)
class DatasetRead:
    """One data set a run read, as MLflow records it (``log_inputs``)."""

    name: str  # "fashion-mnist/train"
    digest: str  # the manifest's content hash (first DIGEST_LENGTH hex digits)
    source: str  # the canonical folder (or subsets folder) it was read from
    context: str  # "training" | "evaluation" | "subsets"
    profile: dict[str, Any]


def datasets_read(cfg: PipelineConfig, root: Path, stage: str | None = None) -> list[DatasetRead]:
    """The data sets ``stage`` reads (:data:`STAGE_READS`; None: every one, for the pipeline
    run), each with the content hash its manifest records; absent manifests are left out."""
    wanted = set(STAGE_READS.get(stage, ())) if stage else {"train", "test", "subsets", "transfer"}
    paths = StagePaths.of(cfg)
    reads: list[DatasetRead] = []

    def splits(folder: Path, kinds: tuple[str, ...]) -> None:
        manifest = _manifest(root / folder / "manifest.json")
        if manifest is None or "content_hash" not in manifest:
            return
        for split in kinds:
            info = (manifest.get("splits") or {}).get(split, {})
            reads.append(DatasetRead(
                f"{manifest.get('name', folder.name)}/{split}",
                str(manifest["content_hash"])[:DIGEST_LENGTH], str(folder),
                "training" if split == "train" else "evaluation",
                {"count": info.get("count"), "classes": len(manifest.get("classes", []))}))

    splits(paths.dataset(cfg.data.source), tuple(s for s in ("train", "test") if s in wanted))
    if "subsets" in wanted:
        manifest = _manifest(root / paths.subsets / "manifest.json")
        if manifest is not None:
            # its own hash (data.subsets.hash): its content_hash is the data set's it was drawn from
            reads.append(DatasetRead(f"{manifest.get('dataset', cfg.data.source.name)}/subsets",
                                     _short_hash(manifest), str(paths.subsets), "subsets",
                                     {"train_size": manifest.get("train_size")}))
    if "transfer" in wanted:
        for source in cfg.data.transfer:
            splits(paths.transfer_dataset(source), ("train", "test"))
    return reads


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return content if isinstance(content, dict) else None


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a posix string (an absolute path outside it unchanged)."""
    if path.is_absolute():
        try:
            return path.relative_to(root.resolve()).as_posix()
        except ValueError:
            return path.as_posix()
    return path.as_posix()


def _short_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
