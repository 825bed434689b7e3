"""Every study end to end from its one command (``simclr study NAME``), under real Ray Tune.

The tiny preset's 2 x 2 grids (``study.scale=smoke``) on sklearn's digits, one Ray instance
for the module (the command connects to it as it would to a cluster), one MLflow sqlite store.
A killed and restarted study is tested with real processes in tests/flows/test_study.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.stages.cli import main
from components.studies.grids import STUDIES
from components.studies.tracking import EXPERIMENT_TAG, ROLE_TAG, STUDY_TAG
from tests.components.studies.conftest import DigitsData

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance of 2 CPUs for this module's studies (two 1-CPU trials at once)."""
    import ray

    from components.training.ray_driver import prepare_local_instance

    prepare_local_instance()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def test_every_study_runs_end_to_end_from_one_command(
        digits_data: DigitsData, ray_instance, session_tracking_uri: str, capsys,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(digits_data.root)
    root = digits_data.root
    common = ["--params", str(ROOT / "params.yaml"), "--preset", "tiny",
              "--set", "study.scale=smoke", "--set", "data.transfer=[]",
              "--set", f"paths.data={root / 'data'}", "--set", f"paths.outputs={root / 'outputs'}",
              "--set", f"ray.storage_path={root / 'checkpoints'}",
              "--set", f"study.results_dir={root / 'studies'}",
              "--set", f"tracking.tracking_uri={session_tracking_uri}",
              "--set", "tracking.experiment=studies-end-to-end",
              "--set", "pretrain.epochs=1", "--set", "pretrain.max_images=256",
              # one trial actor per study (reused by its trials): a cold Ray actor costs tens of
              # seconds on a busy 2-core machine, the tiny trials themselves one or two
              "--set", "study.max_concurrent_trials=1"]
    client = MlflowClient(session_tracking_uri)
    for name, study in STUDIES.items():
        assert main(["study", name, *common]) == 0, name
        printed = capsys.readouterr().out  # Tune's configuration table, then the study's
        assert f"# Study `{name}`" in printed and printed.rstrip().endswith("|")
        (folder,) = (root / "studies").glob(f"{name}-smoke-*")
        results = json.loads((folder / "results.json").read_text())
        trials = results["trials"]
        assert len(trials) == len(study.trials("smoke")) <= 6, name  # batch-epochs: 2 x 2 + 2
        assert {t["status"] for t in trials} <= {"finished", "diverged"}, trials
        finished = [t for t in trials if t["status"] == "finished"]
        assert finished and results["best"]["value"] > 0.2, name
        for trial in finished:
            metrics = trial["metrics"]
            assert 0 < metrics["linear_val_top1"] <= 1 and 0 < metrics["knn_val_top1"] <= 1
            assert ("linear_z_val_top1" in metrics) == study.probe_z
            assert not [k for k in metrics if k.endswith("_top1") and "_val_" not in k]
            assert trial["history"] and trial["history"][-1]["epoch"] == metrics["epochs_trained"]
        assert (folder / f"{name}.png").stat().st_size > 10_000
        # MLflow: one parent with the report, one finished child per trial with its curves
        experiment = results["experiment"]
        runs = client.search_runs(
            [client.get_experiment_by_name("studies-end-to-end").experiment_id],
            f"tags.{EXPERIMENT_TAG} = '{experiment}'")
        parents = [r for r in runs if r.data.tags[ROLE_TAG] == "study"]
        children = [r for r in runs if r.data.tags[ROLE_TAG] == "trial"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert parents[0].info.run_id == results["mlflow_run_id"]
        assert parents[0].data.tags[STUDY_TAG] == name
        assert {a.path for a in client.list_artifacts(results["mlflow_run_id"], "study")} == {
            "study/results.json", "study/results.md", f"study/{name}.png"}
        status = {t["name"]: t["status"] for t in trials}
        assert sorted(r.info.run_name for r in children) == sorted(status)
        for child in children:
            assert child.info.status == "FINISHED"  # a diverged trial is a result too
            assert child.data.tags["study_trial_status"] == status[child.info.run_name]
            assert child.data.tags["mlflow.parentRunId"] == results["mlflow_run_id"]
            if status[child.info.run_name] == "finished":
                assert client.get_metric_history(child.info.run_id, "loss")
                assert "linear_val_top1" in child.data.metrics
    # the experiments live under ray.storage_path/studies, one per study
    assert len(list((root / "checkpoints" / "studies").iterdir())) == len(STUDIES)
