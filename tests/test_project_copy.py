"""Test projects are built from source files only, never from a run's state (tests/project.py)."""

from __future__ import annotations

from tests.project import RUN_STATE, make_project_copy


def test_copy_of_a_checkout_with_run_state_holds_none_of_it(tmp_path):
    used = make_project_copy(tmp_path / "used")
    for name in ("dvc.lock", "data/datasets/digits/manifest.json", "data/transfer/x.npy",
                 "outputs/pretrain/encoder.pt", "mlflow.db", ".prefect/prefect.db",
                 "checkpoints/run/checkpoint.pt", "dvc-remote/ab/cdef", ".cache/x",
                 ".dvc/cache/files/md5/ab/cdef", ".dvc/tmp/lock", ".dvc/config.local",
                 ".simclr-run.lock"):
        path = used.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("run state\n")
    used.run("git", "add", "dvc.lock")  # what DVC's autostage does after `dvc repro`
    (used.root / "components" / "new_module.py").write_text("# untracked source\n")

    fresh = make_project_copy(tmp_path / "fresh", source=used.root)
    copied = {str(path.relative_to(fresh.root)) for path in fresh.root.rglob("*")
              if path.is_file() and ".git/" not in f"{path.relative_to(fresh.root)}/"}
    leaked = sorted(name for name in copied
                    if any(name == state or name.startswith(f"{state}/") for state in RUN_STATE))
    assert leaked == []
    assert {"dvc.yaml", "params.yaml", "components/new_module.py", ".dvc/config"} <= copied
    assert (fresh.root / "params.yaml").read_text() == (used.root / "params.yaml").read_text()
