"""The flow end to end over a project copy: real DVC, real MLflow store, real Prefect API."""

from __future__ import annotations

import re

import pytest
from mlflow import MlflowClient
from prefect.artifacts import Artifact

from components.config import load_config
from flows.pipeline import ARTIFACT_KEY, RAN, SKIPPED, simclr_pipeline
from tests.flows.conftest import DATA_STAGES, project_with_store, task_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api):
    yield from project_with_store(tmp_path_factory.mktemp("flow") / "project")


def run_flow(project, **parameters):
    return simclr_pipeline(project_dir=str(project.root), return_state=True, **parameters)


def commented_params(project) -> list[str]:
    """Put the checkout's params.yaml (comments and all) into the copy, with its fast data
    settings; returns the comments."""
    import json

    from components.config import apply_to_params_file
    from tests.project import FAST_DATA_PARAMS, ROOT

    text = (ROOT / "params.yaml").read_text()
    (project.root / "params.yaml").write_text(text)
    data, subsets = FAST_DATA_PARAMS["data"], FAST_DATA_PARAMS["subsets"]
    apply_to_params_file(project.root / "params.yaml", None, [
        f"data.source={json.dumps(data['source'])}", f"data.transfer={json.dumps(data['transfer'])}",
        f"subsets={json.dumps(subsets)}"])
    project.commit("params.yaml with its comments")
    return [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]


def test_first_run_runs_every_stale_stage_under_one_parent_mlflow_run(project):
    comments = commented_params(project)
    state = run_flow(project, preset="tiny", stages=DATA_STAGES)
    assert state.is_completed(), state.message
    assert state.result() == {"ingest": RAN, "subsets": RAN}

    # DVC recorded both runs and agrees nothing is stale
    lock = (project.root / "dvc.lock").read_text()
    assert "ingest:" in lock and "subsets:" in lock
    assert project.dvc("status", *DATA_STAGES).stdout.strip().endswith("up to date.")
    # the preset was written into params.yaml, as `dvc exp run -S` would, comments kept
    assert project.params()["pretrain"]["epochs"] == 2
    text = (project.root / "params.yaml").read_text()
    assert [c for c in comments if c not in text] == []

    flow_run_id = str(state.state_details.flow_run_id)
    client = MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("simclr").experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("pipeline") == "true"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["prefect_flow_run_id"] == flow_run_id
    children = {run.data.tags["stage"]: run for run in runs
                if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == set(DATA_STAGES)
    assert all(run.info.status == "FINISHED" for run in children.values())
    assert children["ingest"].data.tags["prefect_flow_run_id"] == flow_run_id
    logged = {item.path for item in client.list_artifacts(parent.info.run_id, "lineage/after")}
    assert logged == {"lineage/after/dvc.lock", "lineage/after/manifests"}
    # named by date and config digest, described, with the data sets the run produced and read
    cfg = load_config(project.root / "params.yaml")
    assert re.fullmatch(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d · {cfg.digest()[:8]}",
                        parent.info.run_name), parent.info.run_name
    note = parent.data.tags["mlflow.note.content"]
    assert "stages: ingest, subsets" in note and "preset: tiny" in note
    assert parent.data.tags["mlflow.source.git.commit"] == parent.data.tags["git_commit"]
    datasets = {d.dataset.name for d in parent.inputs.dataset_inputs}
    assert {f"{cfg.data.source.name}/train", f"{cfg.data.source.name}/subsets"} <= datasets

    artifact = Artifact.get(ARTIFACT_KEY)
    assert artifact is not None and artifact.flow_run_id == state.state_details.flow_run_id
    assert parent.info.run_id in artifact.data and "| subsets | ran |" in artifact.data


def test_second_run_with_unchanged_inputs_recomputes_nothing(project):
    lock_before = (project.root / "dvc.lock").read_text()
    state = run_flow(project, preset="tiny", stages=DATA_STAGES)
    assert state.is_completed(), state.message
    assert state.result() == {"ingest": SKIPPED, "subsets": SKIPPED}
    assert (project.root / "dvc.lock").read_text() == lock_before
    # DVC's answer came first: only the source check ran, and no MLflow run was opened
    assert set(task_runs(state.state_details.flow_run_id)) == {"fingerprint"}
    client = MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("simclr").experiment_id])
    assert len([run for run in runs if run.data.tags.get("pipeline") == "true"]) == 1


def test_changed_param_reruns_only_the_stages_that_depend_on_it(project):
    state = run_flow(project, overrides=["subsets.seed=1"], stages=DATA_STAGES)
    assert state.is_completed(), state.message
    assert state.result() == {"ingest": SKIPPED, "subsets": RAN}
    assert project.dvc("status", *DATA_STAGES).stdout.strip().endswith("up to date.")


def test_invalid_override_fails_before_any_stage_naming_the_key(project):
    params_before = (project.root / "params.yaml").read_text()
    state = run_flow(project, overrides=["pretrain.batch_size=-4"], stages=DATA_STAGES)
    assert state.is_failed()
    assert "pretrain.batch_size" in state.message
    assert (project.root / "params.yaml").read_text() == params_before
    assert task_runs(state.state_details.flow_run_id) == {}

    state = run_flow(project, stages=["ingest", "no-such-stage"])
    assert state.is_failed() and "no-such-stage" in state.message
