"""The encoder in the MLflow model registry: log, register, move aliases, load back.

Aliases (MLflow stages are deprecated): ``challenger`` is the newest registered version,
``champion`` the one downstream code loads (``models:/simclr-encoder@champion``) and
``previous-champion`` the one a rollback returns to. Every champion move made here is also
recorded in the registered model's ``champion_history`` tag, so a move made in the MLflow UI (which
sets only ``champion``) is recognised: ``simclr models`` says so, and ``simclr rollback`` returns to
the champion the UI replaced.

Each version carries a handful of tags (the gate's decision ``gate`` and ``gate_reason``, the
gate metric ``gate_metric`` and its value, git commit, data hash, the pretrain and register runs,
the encoder file's hash) and its metrics live on its MLflow 3 logged model (the Models pages show
them); :func:`version_metrics` reads them there, or from the ``metric.*`` tags that versions
registered before this carry.

Each registered version is a pyfunc model whose artifact ``checkpoint`` is the encoder checkpoint
in the project's own format (``components.models.checkpoint``: state dict + model config, loaded
with ``torch.load(weights_only=True)``), so it loads back into an ``nn.Module`` that can be
fine-tuned (:func:`load_encoder_from_registry`) and serves features through ``pyfunc`` with a
signature. A second, code-free copy exported with ``torch.export`` (pt2) is logged next to it for
serving only (its URI is the version tag ``inference_model_uri``); pt2 loads back without
BatchNorm modules and cannot ``.train()``, so it is never the fine-tunable copy.

Concurrency: every alias change runs under :func:`registry_lock`: an in-process lock (threads)
and, for a local sqlite store, an exclusive ``flock`` on ``<db>.registry-lock`` next to the
database, so two registrations (threads or processes) serialise and the second sees the first's
champion. For a remote server
there is no shared lock: the champion is read, the decision made, the champion re-read just before
the aliases move, and the whole step retried if it changed in between (compare-and-set by re-reading;
a narrow window remains between that re-read and the alias write, documented in the README).
"""

from __future__ import annotations

import fcntl
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.utils.validation import MAX_METRICS_PER_BATCH
from torch import nn

from components.config import GateConfig
from components.errors import PipelineError
from components.tracking.gate import GateDecision, evaluate_gate
from components.tracking.runs import Tracker

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
# Registered-model tag: the versions simclr made champion, oldest first (comma-separated). An
# alias moved by hand in the MLflow UI is not in it: rollback then returns to its last entry.
HISTORY_TAG = "champion_history"
HISTORY_LENGTH = 50
# Version tag: how simclr made the version champion ("gate", "promote", "rollback").
PROMOTED_BY_TAG = "promoted_by"
# Version tag: the logged model holding the version's metrics (a local sqlite registry keeps no
# model_id for a version whose source is a file location, which ours is: see register_version)
MODEL_ID_TAG = "model_id"
METRIC_TAG = "metric."  # how versions registered before logged-model metrics carry them
CHECKPOINT_ARTIFACT = "checkpoint"
CAS_RETRIES = 5
_THREAD_LOCK = threading.Lock()  # serialises this process's threads for every kind of store


# ----------------------------------------------------------------------------- pyfunc flavour
class EncoderPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: float32 images (B, C, H, W) in [0, 1] -> features (B, feature_dim)."""

    def load_context(self, context: Any) -> None:
        from components.models.checkpoint import load_encoder

        self.encoder, self.spec = load_encoder(Path(context.artifacts[CHECKPOINT_ARTIFACT]))
        self.encoder.eval()

    # an ndarray hint is one MLflow infers nothing from (the logged model's explicit signature
    # validates inputs); without a hint MLflow warns on every import
    def predict(self, context: Any, model_input: np.ndarray, params: Any = None) -> np.ndarray:
        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.encoder(images).numpy()


@dataclass(frozen=True)
class LoggedEncoder:
    model_uri: str  # fine-tunable pyfunc copy (what gets registered)
    model_id: str
    artifact_location: str  # where its files are (the registered version's source)
    inference_uri: str  # pt2 copy, serving only


def log_encoder(tracker: Tracker, run_id: str, checkpoint: Path, encoder: nn.Module,
                in_channels: int, image_size: int, export_pt2: bool = True) -> LoggedEncoder:
    """Log both copies of ``encoder`` as MLflow logged models of run ``run_id``."""
    example = np.random.default_rng(0).random((2, in_channels, image_size, image_size),
                                              dtype=np.float32)
    encoder.eval()
    with torch.no_grad():
        features = encoder(torch.from_numpy(example)).numpy()
    common = {"signature": infer_signature(example, features), "input_example": example,
              "pip_requirements": [f"torch=={torch.__version__.split('+')[0]}",
                                   f"mlflow=={mlflow.__version__}", "numpy"]}
    model_uri, model_id, location = _log_model(
        tracker, run_id, "encoder", "python_function",
        lambda path, model: mlflow.pyfunc.save_model(
            path, python_model=str(Path(__file__).with_name("encoder_model.py")),
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)}, mlflow_model=model, **common))
    inference_uri = ""
    if export_pt2:
        inference_uri, _, _ = _log_model(
            tracker, run_id, "encoder-pt2", "pytorch",
            lambda path, model: mlflow.pytorch.save_model(
                encoder, path, serialization_format="pt2", mlflow_model=model, **common))
    return LoggedEncoder(model_uri, model_id, location, inference_uri)


def _log_model(tracker: Tracker, run_id: str, name: str, flavor: str,
               save: Any) -> tuple[str, str, str]:
    """What ``mlflow.<flavor>.log_model`` does, through the tracker's client (no fluent run):
    create the logged model, save it locally with ``save(path, Model)``, upload, mark READY."""
    client = tracker.client
    logged = client.create_logged_model(tracker.experiment_id, name=name, source_run_id=run_id,
                                        tags={"flavor": flavor})
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / name
        save(str(local), Model(artifact_path=logged.artifact_location, run_id=run_id,
                               model_uuid=logged.model_id, model_id=logged.model_id))
        client.log_model_artifacts(logged.model_id, str(local))
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return f"models:/{logged.model_id}", logged.model_id, logged.artifact_location


# ----------------------------------------------------------------------------- registry
def register_version(client: MlflowClient, name: str, logged: LoggedEncoder, run_id: str,
                     metrics: dict[str, float], tags: dict[str, str], description: str) -> str:
    """Create a new version of ``name`` with ``tags``; ``metrics`` go on its logged model (and
    its run). Returns the version."""
    try:
        client.create_registered_model(name, description="SimCLR image encoder "
                                                          "(float32 (B,C,H,W) in [0,1] -> features)")
    except MlflowException as err:
        if "ALREADY_EXISTS" not in str(err.error_code):
            raise
    log_model_metrics(client, run_id, logged.model_id, metrics)
    all_tags = {**tags, MODEL_ID_TAG: logged.model_id}
    if logged.inference_uri:
        all_tags["inference_model_uri"] = logged.inference_uri
    # source: the files' location, not models:/<id>, which MLflow's registry store resolves
    # through the process-wide tracking URI (its own TODO in create_model_version)
    version = client.create_model_version(name, source=logged.artifact_location, run_id=run_id,
                                          tags=all_tags, description=description,
                                          model_id=logged.model_id)
    return str(version.version)


def log_model_metrics(client: MlflowClient, run_id: str, model_id: str,
                      metrics: dict[str, float]) -> None:
    """``metrics`` on the logged model ``model_id`` (shown on MLflow 3's Models pages)."""
    now = int(time.time() * 1000)
    entries = [Metric(k, float(v), now, 0, model_id=model_id) for k, v in metrics.items()]
    for start in range(0, len(entries), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=entries[start:start + MAX_METRICS_PER_BATCH])


def version_metrics(client: MlflowClient, version: ModelVersion | None) -> dict[str, float] | None:
    """A version's metrics (None for no version): its logged model's, else (a version registered
    before metrics moved to the logged model) its ``metric.*`` tags."""
    if version is None:
        return None
    model_id = version.model_id or version.tags.get(MODEL_ID_TAG)
    if model_id:
        try:
            logged = client.get_logged_model(model_id).metrics or []
        except MlflowException:
            logged = []
        if logged:
            latest: dict[str, Metric] = {}
            for metric in logged:
                kept = latest.get(metric.key)
                if kept is None or (metric.step, metric.timestamp) >= (kept.step, kept.timestamp):
                    latest[metric.key] = metric
            return {key: float(metric.value) for key, metric in latest.items()}
    return {k[len(METRIC_TAG):]: float(v) for k, v in version.tags.items()
            if k.startswith(METRIC_TAG)}


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


@contextmanager
def registry_lock(registry_uri: str) -> Iterator[None]:
    """Exclusive lock for alias changes: a flock next to a local sqlite db, else none (see module)."""
    uri = registry_uri
    with _THREAD_LOCK:
        if not uri.startswith("sqlite:///"):
            yield
            return
        lock_path = Path(uri[len("sqlite:///"):]).with_suffix(".registry-lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def gate_and_promote(tracker: Tracker, name: str, version: str, gate: GateConfig
                     ) -> GateDecision:
    """Set ``challenger`` on ``version``; promote it to ``champion`` if it passes the gate."""
    client = tracker.client
    with registry_lock(tracker.registry_uri):
        client.set_registered_model_alias(name, CHALLENGER, version)
        candidate = client.get_model_version(name, version)
        for _ in range(CAS_RETRIES):
            champion = alias_version(client, name, CHAMPION)
            decision = evaluate_gate(gate, version_metrics(client, candidate) or {},
                                     version_metrics(client, champion))
            if not decision.passed:
                return decision
            if _move_champion(client, name, version, champion, "gate"):
                return decision
            time.sleep(0.1)
        raise PipelineError(f"registry {name}: champion kept changing while promoting version "
                            f"{version}; retry the register stage")


def promote(tracker: Tracker, name: str, version: str) -> str | None:
    """Manual promotion: ``champion`` -> ``version``, the old champion -> ``previous-champion``.

    Returns the old champion's version (None if there was none).
    """
    client = tracker.client
    _require_version(client, name, version)
    with registry_lock(tracker.registry_uri):
        return _promote_locked(client, name, version, "promote")


def rollback(tracker: Tracker, name: str) -> str:
    """``champion`` back to the one before it (:func:`rollback_target`); returns that version."""
    client = tracker.client
    with registry_lock(tracker.registry_uri):
        target = rollback_target(client, name)
        _promote_locked(client, name, target, "rollback")
    return target


def rollback_target(client: MlflowClient, name: str) -> str:
    """The version a rollback returns to.

    After a simclr move (gate, ``promote``, ``rollback``): ``previous-champion``. After a move in
    the MLflow UI (the champion is not the last entry of ``champion_history``): the champion the
    UI replaced, i.e. that last entry. Raises :class:`PipelineError` saying what to do otherwise.
    """
    champion = _version_of(alias_version(client, name, CHAMPION))
    history = champion_history(client, name)
    if history and history[-1] != champion:  # moved outside simclr: undo that move
        return history[-1]
    previous = _version_of(alias_version(client, name, PREVIOUS))
    if previous is not None and previous != champion:
        return previous
    if champion is None:
        raise PipelineError(f"registry {name}: no '{CHAMPION}' alias to roll back from; "
                            f"make one with `simclr promote VERSION`")
    raise PipelineError(f"registry {name}: no earlier champion recorded for version {champion} "
                        f"(no '{PREVIOUS}' alias, no '{HISTORY_TAG}' tag); pick the version with "
                        f"`simclr promote VERSION` (see `simclr models`)")


def champion_history(client: MlflowClient, name: str) -> list[str]:
    """The versions simclr made champion, oldest first (the ``champion_history`` tag)."""
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException:
        return []
    return [v for v in tags.get(HISTORY_TAG, "").split(",") if v]


def _promote_locked(client: MlflowClient, name: str, version: str, how: str) -> str | None:
    for _ in range(CAS_RETRIES):
        champion = alias_version(client, name, CHAMPION)
        if _move_champion(client, name, version, champion, how):
            return None if champion is None else str(champion.version)
        time.sleep(0.1)
    raise PipelineError(f"registry {name}: champion kept changing; retry")


def _move_champion(client: MlflowClient, name: str, version: str,
                   expected: ModelVersion | None, how: str) -> bool:
    """Compare-and-set: move the aliases only if the champion is still ``expected``; record the
    move (``how``: gate, promote, rollback) in ``champion_history`` and the version's tags."""
    current = alias_version(client, name, CHAMPION)
    if _version_of(current) != _version_of(expected):
        return False
    history = champion_history(client, name)
    if _version_of(current) == version and history and history[-1] == version:
        return True
    client.set_registered_model_alias(name, CHAMPION, version)
    if current is not None and str(current.version) != version:
        client.set_registered_model_alias(name, PREVIOUS, str(current.version))
    client.set_model_version_tag(name, version, PROMOTED_BY_TAG, how)
    client.set_registered_model_tag(name, HISTORY_TAG,
                                    ",".join([*history, version][-HISTORY_LENGTH:]))
    return True


def displayed_decision(version: ModelVersion, aliases: list[str], history: list[str]) -> str:
    """What the registry decided about ``version``, consistent with its aliases.

    A champion set in the MLflow UI keeps the gate's old tag (say ``refused``): shown as
    ``champion set in the MLflow UI (gate: refused)`` rather than the bare, contradicting tag.
    """
    gate = version.tags.get("gate", "")
    if CHAMPION not in aliases:
        return gate or "-"
    if not history or history[-1] != str(version.version):
        how = "set in the MLflow UI"
    else:
        how = {"gate": "promoted by the gate", "promote": "promoted by `simclr promote`",
               "rollback": "restored by `simclr rollback`"}.get(
            version.tags.get(PROMOTED_BY_TAG, ""), "champion")
    if how == "promoted by the gate" or not gate:
        return how
    return f"{how} (gate: {gate})"


def _version_of(version: ModelVersion | None) -> str | None:
    return None if version is None else str(version.version)


def _require_version(client: MlflowClient, name: str, version: str) -> None:
    try:
        client.get_model_version(name, str(version))
    except MlflowException as err:
        raise PipelineError(f"registry {name}: no version {version}") from err


def list_versions(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """One row per version (newest first): version, aliases, decision, metrics, run id, creation
    time (ms), git commit, gate decision and metric."""
    aliases: dict[str, list[str]] = {}
    try:
        for alias, version in client.get_registered_model(name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    except MlflowException as err:
        raise PipelineError(f"registry: no registered model {name!r} (run the register stage)"
                            ) from err
    rows = []
    history = champion_history(client, name)
    for version in client.search_model_versions(f"name = '{name}'"):
        version_aliases = sorted(aliases.get(str(version.version), []))
        rows.append({"version": str(version.version),
                     "aliases": version_aliases,
                     "decision": displayed_decision(version, version_aliases, history),
                     "metrics": version_metrics(client, version) or {},
                     "run_id": version.run_id, "created": version.creation_timestamp,
                     "git_commit": version.tags.get("git_commit", ""),
                     "gate": version.tags.get("gate", ""),
                     "gate_metric": version.tags.get("gate_metric", "")})
    return sorted(rows, key=lambda row: int(row["version"]), reverse=True)


# ----------------------------------------------------------------------------- loading
def model_files_uri(client: MlflowClient, model_uri: str) -> str:
    """Where the files of ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or
    ``models:/<model id>`` are, resolved through ``client``: MLflow's own resolution of
    ``models:/`` URIs reads the process-wide registry URI instead."""
    if not model_uri.startswith("models:/"):
        return model_uri
    ref = model_uri[len("models:/"):].strip("/")
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = str(client.get_model_version_by_alias(name, alias).version)
        elif "/" in ref:
            name, version = ref.split("/", 1)
        else:
            return client.get_logged_model(ref).artifact_location
        return client.get_model_version_download_uri(name, version)
    except MlflowException as err:
        raise PipelineError(f"{model_uri}: not found in the registry ({err.message})") from err


def load_encoder_from_registry(model_uri: str, tracking_uri: str,
                               registry_uri: str | None = None) -> nn.Module:
    """Download a registered encoder and rebuild it as a trainable ``nn.Module`` (in eval mode).

    ``model_uri`` is any MLflow model URI: ``models:/<name>@<alias>``, ``models:/<name>/<version>``,
    read from the store at ``tracking_uri`` (registry: ``registry_uri``, default the same); MLflow's
    process-wide URIs are neither read nor changed.
    The module maps float32 (B, C, H, W) in [0, 1] to features (B, feature_dim); call ``.train()``
    to fine-tune it. The checkpoint's spec (model config, channels, size, meta) is ``.spec``.
    """
    from components.models.checkpoint import load_encoder

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=model_files_uri(client, model_uri), tracking_uri=tracking_uri))
    except MlflowException as err:
        raise PipelineError(f"{model_uri}: cannot download from the registry ({err})") from err
    found = sorted((local / "artifacts").glob("*.pt"))
    if not found:
        raise PipelineError(f"{model_uri}: no encoder checkpoint among its artifacts "
                            "(not a model logged by the register stage)")
    encoder, spec = load_encoder(found[0])
    encoder.spec = spec  # type: ignore[assignment]
    return encoder.eval()
