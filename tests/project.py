"""A throw-away copy of this project in its own git + DVC repo, for end-to-end tests.

The copy holds the project's source files as they are in the working tree (what git tracks,
plus untracked files it does not ignore) and never run state (:data:`RUN_STATE`: ``dvc.lock``,
which DVC's autostage puts into git's index, data, outputs, stores, caches), so tests pass the
same before and after ``make pipeline`` in this checkout. ``run`` executes commands there with the
project's venv first on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost",
}

# Seconds-scale data: digits as the main source, no transfer sets.
FAST_DATA_PARAMS: dict[str, Any] = {
    "data": {
        "source": {"kind": "digits", "path": None, "name": "digits", "classes": None},
        "transfer": [],
    },
    "subsets": {"fractions": [0.1, 0.5], "seed": 0},
}


def tiny_params() -> dict[str, Any]:
    """The tiny preset merged over this checkout's ``params.yaml``, every field explicit."""
    from components.config import load_config

    return load_config(ROOT / "params.yaml", "tiny").model_dump(mode="json")


# What a run leaves in a checkout (files, or folders with everything under them).
RUN_STATE = ("dvc.lock", "data", "outputs", "mlflow.db", "mlruns", "mlartifacts", ".prefect",
             "checkpoints", "dvc-remote", ".cache", ".stack", ".simclr-run.lock", ".dvc/cache",
             ".dvc/tmp", ".dvc/config.local")


def is_run_state(name: str) -> bool:
    return any(name == state or name.startswith(f"{state}/") for state in RUN_STATE)


def project_files(root: Path = ROOT) -> list[str]:
    """The source files of the checkout at ``root`` (see the module docstring), sorted."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout
    return sorted(name for name in listed.split("\0")
                  if name and not is_run_state(name) and (root / name).is_file())


class ProjectCopy:
    def __init__(self, root: Path):
        self.root = root
        self.env = {**GIT_IDENTITY,
                    "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "DVC_NO_ANALYTICS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}

    def run(self, *args: str, check: bool = True, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(args, cwd=self.root, capture_output=True, text=True,
                                timeout=timeout, env={**os.environ, **self.env, **(env or {})})
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n"
                                 f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
        return result

    def dvc(self, *args: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run(str(VENV_BIN / "dvc"), *args, check=check, **kwargs)

    def params(self) -> dict[str, Any]:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def update_params(self, changes: dict[str, Any]) -> None:
        from components.config import deep_merge

        merged = deep_merge(self.params(), changes)
        (self.root / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))

    def lock_outs(self) -> dict[str, dict[str, str]]:
        """``{stage: {out path: md5}}`` of the project's dvc.lock."""
        stages = yaml.safe_load((self.root / "dvc.lock").read_text())["stages"]
        return {name: {out["path"]: out["md5"] for out in entry.get("outs", [])}
                for name, entry in stages.items()}

    def commit(self, message: str) -> str:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message, "--allow-empty")
        return self.run("git", "rev-parse", "HEAD").stdout.strip()


def make_project_copy(dest: Path, params: dict[str, Any] | None = None,
                      source: Path = ROOT) -> ProjectCopy:
    """Copy the project at ``source`` into ``dest`` (a new git repo, one commit)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in project_files(source):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target)
    project = ProjectCopy(dest)
    if params:
        project.update_params(params)
    project.run("git", "init", "-q", "-b", "main")
    project.commit("copy of the project under test")
    return project
