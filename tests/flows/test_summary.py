"""flows.summary and the flow's one-line DVC answer: what a run says when it ends (no Prefect run)."""

from __future__ import annotations

import re

import pytest

from components.config import load_config
from components.stage_api import StagePaths, write_metrics
from flows.pipeline import describe_changes, describe_stale
from flows.summary import (
    RegistryOutcome,
    RunRecord,
    closing_summary,
    mlflow_how_to_open,
    results_markdown,
)
from tests.project import ROOT

STAGES = ["ingest", "subsets", "pretrain", "linear-eval", "finetune", "transfer", "baselines",
          "report", "register"]
REGISTRY = RegistryOutcome("simclr-encoder", "3", ("challenger", "champion"), "passed",
                           "linear_val_top1 0.8700 >= champion's 0.8600 + 0.0")
SQLITE = RunRecord("FINISHED", "sqlite:////p/mlflow.db", "1", "abc123")


@pytest.fixture
def project(tmp_path):
    """A project folder whose evaluation stages and report have written their outputs."""
    cfg = load_config(ROOT / "params.yaml", "tiny")
    paths = StagePaths(tmp_path / cfg.paths.data, tmp_path / cfg.paths.outputs)
    for stage, metrics in {
            "linear-eval": {"linear_top1": 0.8737, "linear_val_top1": 0.8697, "knn_top1": 0.85},
            "baselines": {"random_linear_top1": 0.4512, "random_knn_top1": 0.40},
            "register": {"registered_version": 3.0, "promoted": 1.0}}.items():
        paths.stage_dir(stage).mkdir(parents=True)
        write_metrics(paths.metrics_file(stage), metrics)
    paths.stage_dir("report").mkdir(parents=True)
    paths.results.write_text("# Results\n\n| a | b |\n|---|---|\n\n## Run details\n\n| metric | "
                             "value |\n|---|---:|\n| `l2_linear` | 0.0001 |\n")
    return cfg, tmp_path


def test_closing_summary_says_what_ran_the_results_the_decision_and_where_to_look(project):
    cfg, root = project
    summary = closing_summary(cfg, root, dict.fromkeys(STAGES, "ran"), SQLITE, REGISTRY,
                              "simclr-results")
    lines = summary.splitlines()
    assert lines[0].startswith("pipeline finished: ingest ran, subsets ran")
    assert any("Linear evaluation" in line and "87.37 (86.97)" in line and "+42.25" in line
               for line in lines)
    assert ("registry: simclr-encoder version 3 (challenger, champion); gate passed: "
            "linear_val_top1 0.8700") in summary
    assert ("MLflow run abc123 (FINISHED): `mlflow ui --backend-store-uri sqlite:////p/mlflow.db`"
            ", then open http://127.0.0.1:5000/#/experiments/1/runs/abc123") in summary
    assert "Prefect artifact simclr-results" in summary
    assert len(lines) < 20


def test_a_failed_run_names_the_failed_stage_and_shows_no_stale_results(project):
    cfg, root = project
    outcomes = {**dict.fromkeys(STAGES[:2], "ran"), "pretrain": "failed",
                **dict.fromkeys(STAGES[3:], "not run")}
    summary = closing_summary(cfg, root, outcomes,
                              RunRecord("FAILED", "http://mlflow:5000/", "1", "abc123"), REGISTRY,
                              "simclr-results")
    assert summary.startswith("pipeline FAILED: ingest ran, subsets ran, pretrain failed, "
                              "linear-eval not run")
    assert "\nresults " not in summary and "registry:" not in summary  # the last run's, not this
    assert "MLflow run abc123 (FAILED): http://mlflow:5000/#/experiments/1/runs/abc123" in summary


def test_a_no_op_run_says_nothing_to_do_in_a_few_lines(project):
    cfg, root = project
    record = RunRecord("NOTHING_TO_DO", "sqlite:////p/mlflow.db", "1", None)
    summary = closing_summary(cfg, root, dict.fromkeys(STAGES, "skipped (up to date)"), record,
                              REGISTRY, "simclr-results")
    assert summary.startswith("nothing to do: ") and "no MLflow run opened" in summary
    assert "registry: simclr-encoder version 3" in summary and len(summary.splitlines()) <= 3


def test_artifact_has_one_results_heading_four_columns_and_the_registry_decision(project):
    cfg, root = project
    text = results_markdown(cfg, root, dict.fromkeys(STAGES, "ran"), SQLITE, REGISTRY)
    assert len(re.findall(r"^#+ Results$", text, re.MULTILINE)) == 1
    assert "| simclr-encoder | 3 | challenger, champion | passed | linear_val_top1 0.8700" in text
    assert "(http://127.0.0.1:5000/#/experiments/1/runs/abc123)" in text
    tables = [line for line in text.splitlines() if line.startswith("| Protocol")]
    assert tables == ["| Protocol | SimCLR test (val) | Baseline test | Gain |"]
    assert "### Run details" in text and "| `l2_linear` | 0.0001 |" in text


def test_mlflow_how_to_open_a_server_or_a_local_store():
    assert mlflow_how_to_open("http://h:5000", "7", "r") == "http://h:5000/#/experiments/7/runs/r"
    assert mlflow_how_to_open("sqlite:///m.db", "7", "r") == (
        "`mlflow ui --backend-store-uri sqlite:///m.db`, then open "
        "http://127.0.0.1:5000/#/experiments/7/runs/r")


def test_dvc_answer_is_one_short_line():
    stale = {"ingest": [{"changed deps": {"outputs/fingerprint/fingerprint.json": "modified"}}],
             "pretrain": [{"changed deps": {"params.yaml": {"pretrain.epochs": "modified"},
                                            "components/a.py": "modified",
                                            "components/b.py": "modified",
                                            "components/c.py": "modified"}},
                          {"changed outs": {"outputs/pretrain": "deleted"}}],
             "report": ["always changed"]}
    assert describe_stale(stale) == (
        "stale: ingest (deps changed: outputs/fingerprint/fingerprint.json), pretrain (deps "
        "changed: components/a.py, components/b.py (+1); params changed: pretrain.epochs; outs "
        "changed: outputs/pretrain), report (always changed)")
    assert describe_changes("unknown") == "unknown"
    assert describe_stale(dict.fromkeys(["ingest", "subsets", "pretrain"], ["always changed"]),
                          locked={"ingest"}) == "stale: ingest (always changed), subsets, pretrain (never run)"
