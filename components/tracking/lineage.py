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
from components.stage_api import StagePaths

DVC_LOCK = "dvc.lock"
PARAMS_FILE = "params.yaml"


def git_state(root: Path) -> dict[str, str]:
    """``{"git_commit": sha, "git_dirty": "true"|"false"}`` of the repo holding ``root``; {} if none."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=30, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=root, capture_output=True, text=True, timeout=30,
                                check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": str(bool(status.strip())).lower()}


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
    tags = {**git_state(root), **dvc_stage_hashes(root / DVC_LOCK), **data_hashes(cfg, root)}
    tags["params_digest"] = cfg.digest()
    flow_run_id = prefect_flow_run_id()
    if flow_run_id:
        tags["prefect_flow_run_id"] = flow_run_id
    return tags


def lineage_files(cfg: PipelineConfig, root: Path) -> list[Path]:
    """Files worth attaching to a run as lineage: params.yaml, dvc.lock and the data manifests."""
    files = [root / PARAMS_FILE, root / DVC_LOCK] + data_manifests(cfg, root)
    return [path for path in files if path.is_file()]


def _short_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
