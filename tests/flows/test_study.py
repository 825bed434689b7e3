"""``python -m flows.study``: bad input before any work, and a study that is killed mid-way
and restarted finishes without re-running its finished trials.

The kill is real: ``simclr study`` (``python -m components.stages.cli study``) runs as its own
process with its own local Ray instance and gets SIGKILL (no handler runs) once one trial
has finished and the next is training; the restart is the Prefect flow, which brings the
data stages up to date through DVC (nothing to do) and resumes the Tune experiment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow import MlflowClient

from tests.project import VENV_BIN, ProjectCopy, make_project_copy

ROOT = Path(__file__).resolve().parents[2]
STUDY = ["temperature", "--preset", "tiny", "--set", "study.scale=smoke",
         "--set", "study.max_concurrent_trials=1", "--set", "pretrain.epochs=8",
         "--set", "pretrain.max_images=512"]
TIMEOUT_S = 600


@pytest.fixture
def project(tmp_path: Path) -> ProjectCopy:
    """A project copy whose params.yaml has the tiny preset's data (a study never changes the
    data sections of params.yaml)."""
    tiny = yaml.safe_load((ROOT / "presets" / "tiny.yaml").read_text())
    return make_project_copy(tmp_path / "project", {"data": tiny["data"]})


def environment(project: ProjectCopy) -> dict[str, str]:
    """The copy's code first (also for ``dvc repro``'s ``simclr``), Prefect's temporary API."""
    return {**os.environ, **project.env, "PYTHONPATH": str(project.root), "PREFECT_API_URL": "",
            "PREFECT_HOME": str(project.root / ".prefect")}


def run(project: ProjectCopy, *args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=project.root, env=environment(project),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, named", [
    (["-m", "flows.study", "nope"], "error: study: unknown study 'nope'; studies: augmentations"),
    (["-m", "flows.study", "temperature", "--set", "pretrain.batch_size=3"],
     "error: invalid configuration: pretrain.batch_size: 3"),
    (["-m", "flows.study", "temperature", "--set", "data.source.name=other"],
     "error: data: the study's --preset/--set change what params.yaml sets"),
    (["-m", "flows.study", "batch-epochs", "--preset", "tiny", "--set", "pretrain.max_images=200"],
     "error: trial 'batch 256, epochs 2': invalid configuration: pretrain.max_images: 200 is "
     "smaller than pretrain.batch_size=256"),
    (["-m", "components.stages.cli", "study", "nope"], "error: study: unknown study 'nope'"),
])
def test_bad_input_is_one_error_line_and_exit_2_before_any_work(project, args, named):
    done = run(project, *args, timeout=180)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(named), lines
    assert not (project.root / ".prefect").exists() and not (project.root / "mlflow.db").exists()


def survivors(tree: list[psutil.Process], grace_s: float) -> list[str]:
    """Processes of ``tree`` still running after ``grace_s`` (killed; a zombie has ended)."""
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    left = []
    for proc in alive:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
                proc.kill()
        except psutil.Error:
            continue
    return left


def trial_runs(project: ProjectCopy) -> list:
    client = MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("simclr")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], "tags.study_role = 'trial'")


def wait_for_second_trial_training(project: ProjectCopy, proc: subprocess.Popen,
                                   log: Path) -> list:
    """Once a trial has finished and the next one has logged an epoch: the finished runs."""
    client = MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-4000:]
        runs = trial_runs(project)
        finished = [r for r in runs if r.info.status == "FINISHED"]
        running = [r for r in runs if r.info.status == "RUNNING"]
        if finished and any(client.get_metric_history(r.info.run_id, "loss") for r in running):
            return finished
        time.sleep(0.5)
    raise AssertionError(f"no trial finished:\n{log.read_text()[-4000:]}")


@pytest.mark.slow
@pytest.mark.ray
def test_a_killed_study_resumes_without_rerunning_finished_trials(project, tmp_path):
    repro = project.run(str(VENV_BIN / "dvc"), "repro", "subsets", timeout=TIMEOUT_S,
                        env={"PYTHONPATH": str(project.root)})  # the data a study reads
    assert "Running stage 'subsets'" in repro.stdout
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen([sys.executable, "-m", "components.stages.cli", "study", *STUDY],
                                 cwd=project.root, env=environment(project), stdout=out,
                                 stderr=subprocess.STDOUT)
    try:
        finished = wait_for_second_trial_training(project, first, log)
        tree = psutil.Process(first.pid).children(recursive=True)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    # The driver's Ray instance (GCS, raylet, the trial's worker) ends with it; Ray's agents
    # notice that the raylet is gone on their own schedule (over a minute on a busy machine),
    # so they are stopped here, as python -m flows.study's watchdog would at once
    left = survivors(tree, 60)
    assert not [line for line in left if "Agent" not in line], left
    done_before = {r.info.run_name: (r.info.run_id, r.info.end_time, r.data.metrics)
                   for r in finished}
    assert 1 <= len(done_before) < 4

    second = run(project, "-m", "flows.study", *STUDY)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-6000:]
    assert "resuming Tune experiment" in output
    assert "stage ingest: skipped (up to date)" in output
    for name in done_before:  # a finished trial is not trained again
        assert f"{name!r}: training" not in output, name
    runs = trial_runs(project)
    assert sorted(r.info.run_name for r in runs) == sorted(
        ["tau=0.1, l2 norm", "tau=0.1, no l2 norm", "tau=0.5, l2 norm", "tau=0.5, no l2 norm"])
    assert all(r.info.status == "FINISHED" for r in runs)
    for run_ in runs:
        if run_.info.run_name in done_before:
            run_id, end_time, metrics = done_before[run_.info.run_name]
            assert (run_.info.run_id, run_.info.end_time) == (run_id, end_time)
            assert run_.data.metrics == metrics
    (folder,) = (project.root / "bench" / "results" / "studies").glob("temperature-smoke-*")
    results = json.loads((folder / "results.json").read_text())
    assert [t["status"] for t in results["trials"]] == ["finished"] * 4 or \
        {t["status"] for t in results["trials"]} <= {"finished", "diverged"}
    parent = MlflowClient(project.env["MLFLOW_TRACKING_URI"]).get_run(results["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["study_resumed"] == "true"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {results["mlflow_run_id"]}
    assert f"study temperature finished: {folder}" in output


def test_the_study_flow_deploys_like_the_pipeline():
    """prefect.yaml's ``paper-study`` and ``flows.deploy --flow study`` give the flow
    parameters it takes; studies run on demand (no schedule)."""
    import argparse

    from prefect.flows import load_flow_from_entrypoint

    from flows.deploy import flow_parameters, schedule_options

    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())
                   ["deployments"]}
    entry = deployments["paper-study"]
    path, name = entry["entrypoint"].split(":")
    study_flow = load_flow_from_entrypoint(f"{ROOT / path}:{name}")
    assert study_flow.name == "simclr-study"
    assert entry["concurrency_limit"] == 1 and entry["schedules"] == []
    study_flow.validate_parameters(entry["parameters"])
    args = argparse.Namespace(flow="study", study="loss", preset="study", overrides=["seed=1"],
                              stages=None, interval=None, cron=None)
    assert study_flow.validate_parameters(flow_parameters(args, ROOT))["study"] == "loss"
    assert schedule_options(args) == {}
