"""The promotion gate: may a challenger replace the champion? Pure function of two metric dicts."""

from __future__ import annotations

from dataclasses import dataclass

from components.config import GateConfig

TRANSFER_PREFIX = "transfer_"
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
    for key in sorted(k for k in champion if k.startswith(TRANSFER_PREFIX)):
        if key not in challenger:
            return GateDecision(False, f"challenger has no {key} (champion has {champion[key]:.4f})")
        drop = champion[key] - challenger[key]
        if not drop <= gate.max_transfer_drop + EPS:
            return GateDecision(False, f"{key} drops by {drop:.4f} (> max_transfer_drop="
                                       f"{gate.max_transfer_drop:.4f})")
    base = f"{champion[name]:.4f}" if name in champion else "n/a"
    return GateDecision(True, f"{name}={value:.4f} vs champion {base}; transfer metrics within "
                              f"{gate.max_transfer_drop:.4f}")
