"""Promotion in the MLflow UI (its alias editor sets only ``champion``, the same store call as
``MlflowClient.set_registered_model_alias``): ``simclr models`` and ``simclr rollback`` follow."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.stages.cli import main
from tests.components.tracking.helpers import aliases, make_cfg, register_candidate, write_params

GATE = {"gate": {"metric": "linear_val_top1", "min_improvement": 0.01}}


def table(capsys: pytest.CaptureFixture[str], params: str) -> dict[str, str]:
    """``{version: its line}`` of ``simclr models``."""
    capsys.readouterr()
    assert main(["models", "--params", params]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "decision"
    return {line.split()[0]: line for line in lines[1:]}


def test_a_champion_moved_in_the_ui_is_shown_and_rolled_back(project: Path, sqlite_uri: str,
                                                            capsys: pytest.CaptureFixture[str]):
    cfg = make_cfg(sqlite_uri, registry=GATE)
    params = str(write_params(project, sqlite_uri, registry=GATE))
    register_candidate(project, cfg, {"linear_val_top1": 0.70})
    register_candidate(project, cfg, {"linear_val_top1": 0.65}, seed=1)  # refused by the gate
    assert "refused" in table(capsys, params)["2"]

    ui = MlflowClient(sqlite_uri, sqlite_uri)  # what the UI's alias editor does
    ui.set_registered_model_alias("simclr-encoder", "champion", "2")
    assert aliases(ui) == {"champion": "2", "challenger": "2"}  # no previous-champion
    rows = table(capsys, params)
    assert "champion" in rows["2"] and "set in the MLflow UI (gate: refused)" in rows["2"]
    assert "champion" not in rows["1"] and "passed" in rows["1"]

    assert main(["rollback", "--params", params]) == 0
    assert "rolled back to version 1 (from version 2)" in capsys.readouterr().out
    assert aliases(ui) == {"champion": "1", "challenger": "2", "previous-champion": "2"}
    rows = table(capsys, params)
    assert "restored by `simclr rollback`" in rows["1"] and "UI" not in rows["2"]

    # the CLI path keeps working after it: promote, then roll back to previous-champion
    assert main(["promote", "2", "--params", params]) == 0
    assert "promoted by `simclr promote` (gate: refused)" in table(capsys, params)["2"]
    assert main(["rollback", "--params", params]) == 0
    assert aliases(ui)["champion"] == "1"


def test_rollback_says_how_to_fix_a_registry_without_history(project: Path, sqlite_uri: str,
                                                             capsys: pytest.CaptureFixture[str]):
    cfg = make_cfg(sqlite_uri, registry=GATE)
    params = str(write_params(project, sqlite_uri, registry=GATE))
    register_candidate(project, cfg, {"linear_val_top1": 0.70})  # champion by the gate, no previous
    capsys.readouterr()
    assert main(["rollback", "--params", params]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "simclr promote VERSION" in error
    assert aliases(MlflowClient(sqlite_uri, sqlite_uri))["champion"] == "1"
