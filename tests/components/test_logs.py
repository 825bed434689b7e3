"""components.logs: the level and text the flow logs for each line a stage (or Ray, DVC) prints."""

from __future__ import annotations

import logging

import pytest

from components.logs import RELAYED_ENV, LineLevels, progress_log_format, stage_log_format


@pytest.mark.parametrize("line, level, text", [
    # this project's relayed format: the level word goes (Prefect's logger shows it)
    ("INFO pretrain: Ray run abc, 2 worker(s)", logging.INFO, "pretrain: Ray run abc, 2 worker(s)"),
    ("WARNING source x: 3 unreadable files", logging.WARNING, "source x: 3 unreadable files"),
    # the standalone format: its timestamp goes too (one timestamp per line)
    ("2026-12-02 19:40:01,123 ERROR components.x: boom", logging.ERROR, "components.x: boom"),
    ("2026/12/02 19:40:01 WARNING mlflow.models.model: Input example should be provided",
     logging.WARNING, "mlflow.models.model: Input example should be provided"),
    # Ray's Python logger and its C++ (glog) lines
    ("2026-12-02 19:40:01,123\tWARNING worker.py:2046 -- SIGTERM handler is not set",
     logging.WARNING, "worker.py:2046 -- SIGTERM handler is not set"),
    ("[2026-12-02 19:40:01,123 E 4242 4243] core_worker.cc:512: Failed to connect",
     logging.WARNING, "core_worker.cc:512: Failed to connect"),
    ("[2026-12-02 19:40:01,123 W 4242 4243] gcs_client.cc:1: slow", logging.WARNING,
     "gcs_client.cc:1: slow"),
    # DVC keeps its own "WARNING:" wording; Python warnings and error lines
    ("WARNING: 'outputs/x' is empty.", logging.WARNING, "WARNING: 'outputs/x' is empty."),
    ("ERROR: failed to reproduce 'pretrain'", logging.ERROR, "ERROR: failed to reproduce 'pretrain'"),
    ("/venv/lib/torch/x.py:12: UserWarning: TypedStorage is deprecated", logging.WARNING,
     "/venv/lib/torch/x.py:12: UserWarning: TypedStorage is deprecated"),
    ("error: stage pretrain: pretrain.batch_size: 63", logging.ERROR,
     "error: stage pretrain: pretrain.batch_size: 63"),
    # progress lines stay INFO and whole (a standalone progress line loses its clock time)
    ("pretrain: epoch 3/18 step 270/1620 loss 5.1234 acc 0.412 lr 0.3 img/s 812 ETA 0h21m03s",
     logging.INFO,
     "pretrain: epoch 3/18 step 270/1620 loss 5.1234 acc 0.412 lr 0.3 img/s 812 ETA 0h21m03s"),
    ("19:40:01 pretrain: epoch 1/2 step 2/8 loss 4.0", logging.INFO,
     "pretrain: epoch 1/2 step 2/8 loss 4.0"),
    # DVC's chatter around each stage is debug; colour codes go
    ("Running stage 'ingest':", logging.DEBUG, "Running stage 'ingest':"),
    ("> simclr ingest", logging.DEBUG, "> simclr ingest"),
    ("Updating lock file 'dvc.lock'", logging.DEBUG, "Updating lock file 'dvc.lock'"),
    ("/m/x.py:187: UserWarning: \x1b[33mAdd type hints\x1b[0m", logging.WARNING,
     "/m/x.py:187: UserWarning: Add type hints"),
    ("Verifying data sources in stage: 'ingest'", logging.INFO,
     "Verifying data sources in stage: 'ingest'"),
])
def test_each_line_gets_its_own_level_and_loses_its_timestamp(line, level, text):
    assert LineLevels()(line) == (level, text)


def test_an_indented_line_continues_the_line_before():
    levels = LineLevels()
    assert levels("/x.py:3: FutureWarning: old")[0] == logging.WARNING
    assert levels("  warnings.warn(")[0] == logging.WARNING
    assert levels("Traceback (most recent call last):")[0] == logging.ERROR
    assert levels('  File "x.py", line 1, in <module>') == (logging.ERROR,
                                                            '  File "x.py", line 1, in <module>')
    assert levels("ValueError: bad")[0] == logging.ERROR
    assert levels("ray.exceptions.GetTimeoutError: Get timed out")[0] == logging.ERROR
    assert levels("next ordinary line")[0] == logging.INFO
    # a thread that died of an exception (Ray Train's cleaner thread on a busy host)
    assert levels("Exception in thread PlacementGroupCleanerMonitor:")[0] == logging.ERROR
    assert levels('  File "threading.py", line 1045, in _bootstrap_inner')[0] == logging.ERROR


def test_relayed_formats_have_no_time(monkeypatch):
    monkeypatch.delenv(RELAYED_ENV, raising=False)
    assert "asctime" in stage_log_format() and "asctime" in progress_log_format()[0]
    monkeypatch.setenv(RELAYED_ENV, "1")
    assert "asctime" not in stage_log_format() and "asctime" not in progress_log_format()[0]
