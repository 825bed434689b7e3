"""Every stage of dvc.yaml through ``python -m flows`` on the tiny preset (digits), then a no-op
second run; the captured output is what a person reads: one voice, and a closing summary. The
outputs match, md5 for md5, those of ``dvc repro`` on the same params (the other entry point)."""

from __future__ import annotations

import json
import re
import sys

import pytest
import yaml
from mlflow import MlflowClient
from prefect.artifacts import Artifact

from components.config import load_config
from flows.pipeline import ARTIFACT_KEY, SOURCE_CHECK
from tests.flows.conftest import project_with_store
from tests.project import tiny_params

pytestmark = [pytest.mark.slow, pytest.mark.ray]
# A successful tiny run (2 epochs, 3 label fractions) printed 96 lines, 1 a warning, on an idle
# box (2026-12-03). Not budgeted: WARNING/ERROR records and their tracebacks, which depend on
# the host (on an overloaded one Ray's controller prints timeouts with their tracebacks; they
# stay visible).
LINE_BUDGET = 140
NOISE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| (?:WARNING|ERROR|CRITICAL) ")
TIME_OF_DAY = re.compile(r"\b\d\d:\d\d:\d\d\b")


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api):
    """The params of :func:`tests.conftest.tiny_dvc_repro`'s project (the tiny preset)."""
    yield from project_with_store(tmp_path_factory.mktemp("full") / "project", tiny_params())


def run_flows(project, *args: str) -> list[str]:
    """``python -m flows ARGS`` against the test's Prefect API; its output lines (stdout + stderr)."""
    from prefect.settings import PREFECT_API_URL

    done = project.run(sys.executable, "-m", "flows", *args, timeout=1800,
                       env={"PREFECT_API_URL": PREFECT_API_URL.value(),
                            "PREFECT_HOME": str(project.root / ".prefect")})
    return (done.stdout + done.stderr).splitlines()


def assert_one_voice(lines: list[str]) -> None:
    """No colour codes, one timestamp per line, no Ray Train report dumps."""
    text = "\n".join(lines)
    assert "\x1b[" not in text, "ANSI escape codes in the captured output"
    assert [line for line in lines if len(TIME_OF_DAY.findall(line)) > 1] == []
    assert "TrainingReport" not in text and "Reporting training result" not in text
    assert not any(line.lstrip().startswith("{") for line in lines), "a JSON dump was printed"


def test_every_stage_runs_then_a_second_run_recomputes_nothing(project, tiny_dvc_repro):
    # every stage but the source check, which runs first on every flow run (no outcome, no run)
    stages = [stage for stage in yaml.safe_load((project.root / "dvc.yaml").read_text())["stages"]
              if stage != SOURCE_CHECK]
    lines = run_flows(project, "--preset", "tiny")
    (project.root.parent / "first-run.log").write_text("\n".join(lines))  # to read after a failure
    assert_one_voice(lines)
    print(f"first run: {len(lines)} lines, {sum(bool(NOISE.match(x)) for x in lines)} warnings/errors")
    budgeted = [line for line in lines if not NOISE.match(line)]
    assert len(budgeted) <= LINE_BUDGET, "\n".join(lines)
    text = "\n".join(lines)
    assert f"pipeline finished: {', '.join(f'{stage} ran' for stage in stages)}" in text
    assert "pretrain: epoch 2/2 step" in text and " img/s " in text and " ETA " in text

    client = MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("simclr").experiment_id
    (parent,) = client.search_runs([experiment], "tags.pipeline = 'true'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([experiment],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(run.data.tags["stage"] for run in children) == sorted(stages)
    # the parent compares with other runs: its name, headline metrics, results table, key plots
    assert " · " in parent.info.run_name and not parent.info.run_name.startswith("pipeline-")
    metrics = parent.data.metrics
    for name in ("linear_val_top1", "linear_top1", "knn_top1", "pretrain_monitor_knn_top1",
                 "finetune_10pct_val_top1", "finetune_10pct_top1", "supervised_10pct_top1",
                 "transfer_digits_transfer_top1", "registered_version", "promoted"):
        assert name in metrics, (name, sorted(metrics))
    assert metrics["registered_version"] == 1.0 and not any("." in name for name in metrics)
    register = next(run for run in children if run.data.tags["stage"] == "register")
    assert metrics["promoted"] == register.data.metrics["promoted"]
    assert {item.path for item in client.list_artifacts(parent.info.run_id, "results")} == {
        "results/results.md"}
    assert {item.path for item in client.list_artifacts(parent.info.run_id, "plots/pretrain")} == {
        "plots/pretrain/loss.png"}
    pretrain = next(run for run in children if run.data.tags["stage"] == "pretrain")
    assert "epochs" in pretrain.data.params and "epochs" not in pretrain.data.metrics

    # the closing summary: results, registry decision, the MLflow run and the artifact
    registered = json.loads((project.root / "outputs/register/metrics.json").read_text())
    version = str(int(registered["registered_version"]))
    tags = client.get_model_version("simclr-encoder", version).tags
    gate, reason = tags["gate"], tags["gate_reason"]
    assert "results (every column: outputs/report/results.md):" in text
    assert re.search(r"^\s+\| Linear evaluation .* \| [\d.]+ \(\d", text, re.MULTILINE)
    assert f"registry: simclr-encoder version {version} (" in text
    assert f"gate {gate}: {reason}" in text
    assert (f"MLflow run {parent.info.run_id} (FINISHED): `mlflow ui --backend-store-uri "
            f"{project.env['MLFLOW_TRACKING_URI']}`, then open http://127.0.0.1:5000/#/experiments/"
            f"{experiment}/runs/{parent.info.run_id}") in text
    assert f"Prefect artifact {ARTIFACT_KEY}: " in text

    artifact = Artifact.get(ARTIFACT_KEY)
    assert artifact.flow_run_id is not None
    assert parent.data.tags["prefect_flow_run_id"] == str(artifact.flow_run_id)
    assert parent.info.run_id in artifact.data and f"| simclr-encoder | {version} |" in artifact.data
    assert len(re.findall(r"^#+ Results$", artifact.data, re.MULTILINE)) == 1

    # one stage function under both entry points, deterministic: `dvc repro` of the same params
    # in another copy wrote the same outputs, md5 for md5 (the flow runs the source check
    # itself, so its dvc.lock has no entry for it)
    by_dvc, _ = tiny_dvc_repro
    assert load_config(project.root / "params.yaml") == load_config(by_dvc.root / "params.yaml")
    dvc_outs = {stage: outs for stage, outs in by_dvc.lock_outs().items() if stage != SOURCE_CHECK}
    assert project.lock_outs() == dvc_outs

    lock = (project.root / "dvc.lock").read_text()
    lines = run_flows(project, "--preset", "tiny")
    assert_one_voice(lines)
    assert any("nothing to do: the sources are unchanged" in line for line in lines), lines
    assert f"registry: simclr-encoder version {version}" in "\n".join(lines)
    assert len(lines) <= 25, "\n".join(lines)
    assert (project.root / "dvc.lock").read_text() == lock
    assert len(client.search_runs([experiment], "tags.pipeline = 'true'")) == 1
