"""``simclr verify-remote`` and ``simclr pull``: find, name and repair corrupted DVC remote objects.

    simclr verify-remote [--remote NAME]            # re-hash every object dvc.lock's outputs need
    simclr verify-remote --repair                   # ... and re-upload good copies from the cache
    simclr pull [TARGET ...]                        # dvc pull; on failure, name the bad objects

``dvc push`` and ``dvc status -c`` only check that an object *exists* on the remote, so a
corrupted copy stays corrupted, and ``dvc pull`` refuses it without saying which one. This
re-hashes each object of the default (or named) remote through DVC's own filesystem (a local
folder and S3 alike) and compares it with its name (the md5 it was stored under).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import PipelineConfig
from components.errors import DataError

CHUNK = 1 << 20
JOBS = 8


@dataclass(frozen=True)
class RemoteObject:
    oid: str  # md5, with ``.dir`` for a directory listing
    workspace_path: str  # the output file (or folder) it holds
    remote_path: str
    problem: str = ""  # "", "missing" or "corrupted (md5 ...)"


def _md5(fs: Any, path: str) -> str:
    digest = hashlib.md5()  # noqa: S324 - DVC's content address, not a security hash
    with fs.open(path, "rb") as stream:
        while block := stream.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def locked_objects(repo: Any, remote_odb: Any) -> list[tuple[str, str]]:
    """``(oid, workspace path)`` of every object the outputs in ``dvc.lock`` consist of."""
    from dvc_data.hashfile.tree import Tree

    found: dict[str, str] = {}
    for out in repo.index.outs:
        if not out.use_cache or not out.hash_info or not out.hash_info.value:
            continue
        name = str(out)
        found.setdefault(out.hash_info.value, name)
        if out.hash_info.isdir:
            try:
                tree = Tree.load(out.cache, out.hash_info)
            except Exception:  # noqa: BLE001 - not in the local cache: the remote's listing
                try:
                    tree = Tree.load(remote_odb, out.hash_info)
                except Exception:  # noqa: BLE001 - itself missing or corrupt: reported below
                    continue
            for key, _, entry in tree:
                found.setdefault(entry.value, "/".join((name, *key)))
    return sorted(found.items(), key=lambda item: item[1])


def check_object(remote_odb: Any, oid: str, workspace_path: str) -> RemoteObject:
    path = remote_odb.oid_to_path(oid)
    if not remote_odb.fs.exists(path):
        return RemoteObject(oid, workspace_path, path, "missing")
    actual = _md5(remote_odb.fs, path)
    expected = oid.removesuffix(".dir")
    problem = "" if actual == expected else f"corrupted (content md5 {actual})"
    return RemoteObject(oid, workspace_path, path, problem)


def verify(project: str | Path = ".", remote: str | None = None,
           jobs: int = JOBS) -> tuple[str, list[RemoteObject]]:
    """Re-hash the remote's copy of every object ``dvc.lock`` needs; ``(remote name, results)``."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        try:
            remote_odb = repo.cloud.get_remote_odb(remote)
        except Exception as err:  # noqa: BLE001 - DVC's own message names the remote
            raise DataError(f"DVC remote {remote or '(default)'}: {err}") from err
        name = remote or repo.config["core"].get("remote", "")
        objects = locked_objects(repo, remote_odb)
        with ThreadPoolExecutor(jobs) as pool:
            results = list(pool.map(lambda item: check_object(remote_odb, *item), objects))
    return name, results


def repair(project: str | Path, bad: list[RemoteObject], remote: str | None = None) -> list[str]:
    """Upload the local cache's copy of each bad object (after checking its hash); returns the
    workspace paths that could not be repaired (no good local copy)."""
    from dvc.repo import Repo

    unrepaired = []
    with Repo(str(project)) as repo:
        remote_odb = repo.cloud.get_remote_odb(remote)
        local = repo.cache.local
        for obj in bad:
            local_path = local.oid_to_path(obj.oid)
            if not local.fs.exists(local_path) or \
                    _md5(local.fs, local_path) != obj.oid.removesuffix(".dir"):
                unrepaired.append(obj.workspace_path)
                continue
            if remote_odb.fs.exists(obj.remote_path):
                remote_odb.fs.remove(obj.remote_path)
            remote_odb.fs.makedirs(remote_odb.fs.parent(obj.remote_path), exist_ok=True)
            remote_odb.fs.put_file(local_path, obj.remote_path)
    return unrepaired


def describe(obj: RemoteObject) -> str:
    return f"{obj.remote_path} ({obj.workspace_path}): {obj.problem}"


# ----------------------------------------------------------------------------- commands
def _verify_command(args: argparse.Namespace, cfg: PipelineConfig | None) -> int:
    name, results = verify(".", args.remote)
    bad = [obj for obj in results if obj.problem]
    print(f"remote {name}: {len(results)} object(s) checked, {len(bad)} bad")
    for obj in bad:
        print(f"  {describe(obj)}")
    if not bad:
        return 0
    if not args.repair:
        raise DataError(f"remote {name}: {len(bad)} bad object(s), e.g. {describe(bad[0])}; "
                        "repair from a checkout whose cache has them: simclr verify-remote --repair")
    unrepaired = repair(".", bad, args.remote)
    _, again = verify(".", args.remote)
    still_bad = [obj for obj in again if obj.problem]
    print(f"repaired {len(bad) - len(unrepaired)} object(s) from the local cache")
    if still_bad:
        raise DataError(f"remote {name}: {len(still_bad)} object(s) still bad (no good copy in "
                        f"this cache), e.g. {describe(still_bad[0])}")
    return 0


def _pull_command(args: argparse.Namespace, cfg: PipelineConfig | None) -> int:
    dvc = str(Path(sys.executable).parent / "dvc")
    remote = ["--remote", args.remote] if args.remote else []
    pulled = subprocess.run([dvc, "pull", *remote, *args.targets])
    if pulled.returncode == 0:
        return 0
    name, results = verify(".", args.remote)
    bad = [obj for obj in results if obj.problem]
    if not bad:
        return pulled.returncode
    for obj in bad:
        print(f"  {describe(obj)}", file=sys.stderr)
    raise DataError(f"dvc pull failed: remote {name} holds {len(bad)} bad object(s), e.g. "
                    f"{describe(bad[0])}; repair it from a checkout whose cache has a good copy: "
                    "simclr verify-remote --repair")


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(reads_params=False)  # DVC's own config (.dvc/config), not params.yaml
    parser.add_argument("--remote", default=None, help="DVC remote (default: the default remote)")
    parser.add_argument("--repair", action="store_true",
                        help="re-upload each bad object from the local cache (checked first)")


def _pull_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(reads_params=False)
    parser.add_argument("--remote", default=None, help="DVC remote (default: the default remote)")
    parser.add_argument("targets", nargs="*", help="stages or outputs (default: all)")


Handler = Callable[[argparse.Namespace, PipelineConfig | None], int]  # no params file read: None
COMMANDS: dict[str, tuple[str, Handler, Callable[[argparse.ArgumentParser], None]]] = {
    "verify-remote": ("re-hash the DVC remote's objects for dvc.lock; --repair re-uploads bad ones",
                      _verify_command, _verify_arguments),
    "pull": ("dvc pull that names corrupted remote objects when it fails", _pull_command,
             _pull_arguments),
}
