"""The promotion gate: may a challenger replace the champion? Pure function of two metric dicts.

Choosing a champion is a choice, so the gate reads validation metrics only (``*_val_*``): its
``metric`` must be one (checked when the configuration loads) and the transfer guard compares
``transfer_*_val_top1``. Test metrics are recorded on each version next to them, never read here.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.config import VAL_MARK, GateConfig

TRANSFER_PREFIX = "transfer_"


def is_validation_metric(name: str) -> bool:
    return VAL_MARK in name


def paired_test_metric(name: str) -> str:
    """The test-split metric reported next to a validation one: 'linear_val_top1' -> 'linear_top1'."""
    return name.replace(VAL_MARK, "_", 1)


def transfer_guarded(metrics: dict[str, float]) -> list[str]:
    """The transfer metrics the gate guards: validation top-1 of each transfer data set."""
    return sorted(k for k in metrics if k.startswith(TRANSFER_PREFIX) and k.endswith("_val_top1"))
EPS = 1e-9  # metrics are fractions: 0.71 - 0.70 must count as an improvement of 0.01


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


def evaluate_gate(gate: GateConfig, challenger: dict[str, float],
                  champion: dict[str, float] | None) -> GateDecision:
    """Check ``gate`` for ``challenger``'s metrics against ``champion``'s (None: no champion yet).

    Passes when ``gate.metric`` >= ``min_value``, beats the champion's value by at least
    ``min_improvement``, and no ``transfer_*`` metric the champion has falls more than
    ``max_transfer_drop`` below it (a transfer metric missing from the challenger fails too).
    Only validation metrics are read (see module).
    """
    name = gate.metric
    if name not in challenger:
        return GateDecision(False, f"challenger has no metric {name!r}")
    value = challenger[name]
    if not value >= gate.min_value:  # also rejects NaN
        return GateDecision(False, f"{name}={value:.4f} is below min_value={gate.min_value:.4f}")
    if champion is None:
        return GateDecision(True, f"{name}={value:.4f} >= {gate.min_value:.4f}; no champion yet")
    if name in champion:
        best = champion[name]
        if not value - best >= gate.min_improvement - EPS:
            return GateDecision(False, f"{name}={value:.4f} does not beat champion's {best:.4f} "
                                       f"by min_improvement={gate.min_improvement:.4f}")
    if not is_validation_metric(name):
        return GateDecision(False, f"gate metric {name!r} is not a validation metric")
    for key in transfer_guarded(champion):
        if key not in challenger:
            return GateDecision(False, f"challenger has no {key} (champion has {champion[key]:.4f})")
        drop = champion[key] - challenger[key]
        if not drop <= gate.max_transfer_drop + EPS:
            return GateDecision(False, f"{key} drops by {drop:.4f} (> max_transfer_drop="
                                       f"{gate.max_transfer_drop:.4f})")
    base = f"{champion[name]:.4f}" if name in champion else "n/a"
    return GateDecision(True, f"{name}={value:.4f} vs champion {base}; transfer metrics within "
                              f"{gate.max_transfer_drop:.4f}")
