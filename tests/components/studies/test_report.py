"""A study's report from its trials' records: cells, the markdown table, the plot, the JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image

from components.config import load_config
from components.studies.grids import STUDIES, study_named
from components.studies.plan import StudyPlan
from components.studies.report import (
    TrialRecord,
    best_cell,
    cells,
    markdown_table,
    write_report,
)

ROOT = Path(__file__).resolve().parents[3]


def records(name: str, scale: str, value_of) -> tuple[StudyPlan, list[TrialRecord]]:
    """Records of every trial of a study with the metrics ``value_of(trial)`` gives
    (``None``: the trial diverged)."""
    preset, overrides = {"smoke": ("tiny", ["study.scale=smoke"]), "small": ("study", [])}[scale]
    plan = StudyPlan.of(study_named(name), load_config(ROOT / "params.yaml", preset, overrides), "")
    out = []
    for item in plan.trials:
        value = value_of(item.trial)
        if value is None:
            out.append(TrialRecord(item.trial, "diverged", {"diverged": 1.0}, error="non-finite"))
            continue
        metrics = {"linear_val_top1": value, "knn_val_top1": value - 0.05,
                   "linear_z_val_top1": value - 0.1, "final_loss": 3.0, "epochs_trained": 4.0,
                   "final_contrastive_acc": 0.5, "pretrain_cpu_s": 80.0, "evaluate_s": 9.0}
        history = [{"epoch": 1.0, "step": 23.0, "loss": 4.0}, {"epoch": 2.0, "step": 46.0, "loss": 3.0}]
        out.append(TrialRecord(item.trial, "finished", metrics, history))
    return plan, out


def test_cells_average_seeds_and_take_the_best_variant_on_validation() -> None:
    def value(trial):  # NT-Xent with tau=0.2 is best; seed 1 two points above seed 0
        return 0.80 + 0.01 * ("tau=0.2" in trial.variant) + 0.02 * trial.seed

    plan, recs = records("loss", "small", value)
    by_cell = {c.labels: c for c in cells(plan.study, recs)}
    cell = by_cell[("NT-Xent", "l2 norm")]
    assert cell.variant == "tau=0.2" and cell.seeds == 1 and math.isclose(cell.value, 0.81)
    assert set(cell.variants) == {"tau=0.1", "tau=0.2", "tau=0.5"}
    assert by_cell[("margin triplet", "no l2 norm")].variant == "m=0.25"  # ties: the first
    plan, recs = records("temperature", "small", value)
    cell = {c.labels: c for c in cells(plan.study, recs)}[("tau=0.1", "l2 norm")]
    assert cell.seeds == 2 and math.isclose(cell.value, 0.81) and math.isclose(cell.spread, 0.02)


def test_diverged_trials_show_and_never_win() -> None:
    plan, recs = records("temperature", "smoke",
                         lambda t: None if "no l2" in t.name else 0.7 + ("0.5" in t.name) / 10)
    cell_list = cells(plan.study, recs)
    assert best_cell(cell_list).labels == ("tau=0.5", "l2 norm")
    table = markdown_table(plan.study, plan, recs)
    assert "| tau=0.1 | 70.0 | diverged |" in table
    assert "Best cell on validation: **tau=0.5, l2 norm** (80.0%)" in table
    assert "| tau=0.1, no l2 norm | diverged |" in table


def test_the_augmentation_table_is_the_upper_triangle_of_the_op_matrix() -> None:
    plan, recs = records("augmentations", "smoke", lambda t: 0.6 + 0.1 * len(set(t.cell)))
    table = markdown_table(plan.study, plan, recs)
    assert "| transformation (1st) \\ transformation (2nd) | crop | color |" in table
    assert "| crop | 70.0 | 80.0 |" in table and "| color |  | 70.0 |" in table


def test_the_head_table_gives_h_and_z(tmp_path: Path) -> None:
    plan, recs = records("head", "smoke", lambda t: 0.8)
    table = markdown_table(plan.study, plan, recs)
    assert "| none | h 80.0 / z 70.0 |  |" in table  # no output dimension: the - column
    assert "| nonlinear |  | h 80.0 / z 70.0 | h 80.0 / z 70.0 |" in table


def test_every_study_writes_its_table_plot_and_json(tmp_path: Path) -> None:
    for name in STUDIES:
        plan, recs = records(name, "small", lambda t: 0.75 + 0.001 * len(t.name))
        recs[0] = TrialRecord(recs[0].trial, "diverged", {"diverged": 1.0, "final_loss": math.nan})
        files = write_report(plan.study, plan, recs, tmp_path / name, {"mlflow_run_id": "r"})
        assert [f.name for f in files] == ["results.json", "results.md", f"{name}.png"]
        with Image.open(files[2]) as image:
            assert image.size[0] > 300
        payload = json.loads(files[0].read_text())  # strict JSON: NaN became null
        assert payload["study"] == name and payload["scale"] == "small"
        assert payload["split"].startswith("validation") and payload["mlflow_run_id"] == "r"
        assert len(payload["trials"]) == len(plan.trials)
        assert payload["trials"][0]["metrics"]["final_loss"] is None
        assert payload["best"]["value"] > 0.75
        assert payload["cost"]["trials_with_result"] == len(plan.trials)
        text = files[1].read_text()
        assert text.startswith(f"# Study `{name}`") and "Paper's finding:" in text
