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


def lineage_files(cfg: PipelineConfig, root: Path) -> list[Path]:
    """Files worth attaching to a run as lineage: params.yaml, dvc.lock and the data manifests."""
    files = [root / PARAMS_FILE, root / DVC_LOCK] + data_manifests(cfg, root)
    return [path for path in files if path.is_file()]


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
