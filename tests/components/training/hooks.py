"""Hooks the training tests pass to the loop (importable by Ray workers: module-level classes)."""

from __future__ import annotations

import os
from pathlib import Path

from components.training.loop import EpochEnd, Hook


class CrashOnce(Hook):
    """Kill the last rank's process (``os._exit``, no exception) right after the checkpoint of
    epoch ``after_epoch``, once: ``marker`` records that it happened."""

    def __init__(self, marker: str | Path, after_epoch: int = 1) -> None:
        self.marker, self.after_epoch = str(marker), after_epoch

    def on_epoch_end(self, end: EpochEnd) -> None:
        if end.rank != end.world - 1 or end.epochs_done != self.after_epoch:
            return
        marker = Path(self.marker)
        if marker.exists() or not end.checkpointed:
            return
        import ray.train

        # Die only once Ray has registered this epoch's checkpoint, so the restart point is fixed.
        ray.train.get_all_reported_checkpoints(timeout_s=60)
        marker.write_text(f"killed rank {end.rank} after epoch {end.epochs_done}\n")
        os._exit(1)


class RecordEpochs(Hook):
    """Appends ``rank epochs_done checkpointed`` lines to ``path`` (what the loop told hooks)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.models_built = 0

    def on_model_built(self, model) -> None:  # noqa: ANN001
        self.models_built += 1
        with open(self.path, "a") as sink:
            sink.write(f"built {type(model).__name__}\n")

    def on_epoch_end(self, end: EpochEnd) -> None:
        with open(self.path, "a") as sink:
            sink.write(f"{end.rank} {end.epochs_done} {int(end.checkpointed)}\n")
