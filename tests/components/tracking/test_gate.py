"""The promotion gate as a pure function of challenger and champion metrics."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from components.config import GateConfig
from components.tracking.gate import evaluate_gate, paired_test_metric

GATE = GateConfig(metric="linear_val_top1", min_value=0.5, min_improvement=0.01, max_transfer_drop=0.05)


def test_first_good_version_passes_and_bad_one_fails() -> None:
    assert evaluate_gate(GATE, {"linear_val_top1": 0.6}, None).passed
    decision = evaluate_gate(GATE, {"linear_val_top1": 0.4}, None)
    assert not decision.passed and "below min_value" in decision.reason
    assert not evaluate_gate(GATE, {"linear_val_top1": math.nan}, None).passed
    assert "no metric" in evaluate_gate(GATE, {"knn_val_top1": 0.9}, None).reason


def test_improvement_over_champion_required() -> None:
    champion = {"linear_val_top1": 0.70}
    assert evaluate_gate(GATE, {"linear_val_top1": 0.72}, champion).passed
    assert evaluate_gate(GATE, {"linear_val_top1": 0.71}, champion).passed  # exactly min_improvement
    refused = evaluate_gate(GATE, {"linear_val_top1": 0.705}, champion)
    assert not refused.passed and "does not beat" in refused.reason


def test_transfer_drop_limit() -> None:
    champion = {"linear_val_top1": 0.70, "transfer_digits_val_top1": 0.90, "transfer_cifar_val_top1": 0.4}
    ok = {"linear_val_top1": 0.75, "transfer_digits_val_top1": 0.86, "transfer_cifar_val_top1": 0.5}
    assert evaluate_gate(GATE, ok, champion).passed
    dropped = dict(ok, transfer_digits_val_top1=0.84)
    decision = evaluate_gate(GATE, dropped, champion)
    assert not decision.passed and "transfer_digits_val_top1" in decision.reason
    missing = {k: v for k, v in ok.items() if k != "transfer_cifar_val_top1"}
    assert "no transfer_cifar_val_top1" in evaluate_gate(GATE, missing, champion).reason


def test_gate_reads_validation_metrics_only() -> None:
    """A challenger far better on test but worse on validation is refused; test metrics (even a
    collapsed transfer test score) never decide."""
    champion = {"linear_val_top1": 0.70, "linear_top1": 0.60, "transfer_digits_val_top1": 0.9,
                "transfer_digits_top1": 0.9}
    test_better = {"linear_val_top1": 0.69, "linear_top1": 0.99, "transfer_digits_val_top1": 0.9,
                   "transfer_digits_top1": 0.9}
    assert not evaluate_gate(GATE, test_better, champion).passed
    val_better = {"linear_val_top1": 0.75, "linear_top1": 0.10, "transfer_digits_val_top1": 0.89,
                  "transfer_digits_top1": 0.0}
    assert evaluate_gate(GATE, val_better, champion).passed


def test_a_test_split_gate_metric_is_refused_when_the_config_loads() -> None:
    with pytest.raises(ValidationError, match="not a validation metric"):
        GateConfig(metric="linear_top1")
    assert GateConfig().metric == "linear_val_top1"
    assert paired_test_metric("linear_val_top1") == "linear_top1"
