"""How the pipeline's processes write log lines, and how the flow reads them back.

A stage run by hand (``simclr <stage>``) writes ``time level logger: message`` lines. Under the
Prefect flow every line of a stage is relayed by Prefect's logger, which adds its own time and
level; so the flow sets :data:`RELAYED_ENV` in the stage's environment and the stage writes
``LEVEL message`` (no time; :func:`stage_log_format`), prints no metric dumps, and the flow reads
the level back with :class:`LineLevels` so a warning stays a warning (Prefect's "warning and
above" filter shows it). Lines of other tools (Ray's Python and C++ loggers, DVC, Python's
``warnings``) are mapped the same way, and a leading timestamp of theirs is dropped: one
timestamp per line, Prefect's.
"""

from __future__ import annotations

import logging
import os
import re

RELAYED_ENV = "SIMCLR_LOG_RELAYED"  # "1": a caller timestamps each line (the flow relays stages)

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
           "WARN": logging.WARNING, "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL,
           "FATAL": logging.CRITICAL}
# Ray's C++ "E" lines are about its own actors (a stage that fails says so by its exit status):
# warnings, so that they show under Prefect's "warning and above" without reading as the failure
_GLOG_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.WARNING,
                "F": logging.CRITICAL}
_LEVEL_WORD = "|".join(_LEVELS)

# "2026-12-02 19:40:01,123", "[2026-12-02T19:40:01.123Z]", MLflow's "2026/12/02 19:40:01",
# "19:40:01" (with a tab or spaces after)
_TIMESTAMP = re.compile(
    r"^\[?(?:\d{4}[-/]\d\d[-/]\d\d[ T])?\d\d:\d\d:\d\d(?:[,.]\d+)?Z?\]?[ \t]+")
# this project's own format, Ray's Python logger ("WARNING worker.py:12 -- ...") and DVC's
# ("ERROR: failed to reproduce ...")
_LEVEL_PREFIX = re.compile(rf"^(?P<level>{_LEVEL_WORD})(?P<colon>:?)[ \t]+(?P<rest>.*)$")
# Ray's C++ (glog) lines: "[2026-12-02 19:40:01,123 E 4242 4243] core_worker.cc:12: ..."
_GLOG = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:[,.]\d+)? (?P<level>[IWEF]) \d+ \d+\] "
                   r"(?P<rest>.*)$")
# Python's warnings module: "/path/x.py:12: UserWarning: ..."; a Ray worker's "(pid=1) WARNING ..."
_PY_WARNING = re.compile(r"^\S+:\d+: \w*Warning: ")
# colour codes (MLflow colours its warnings even off a terminal; the relaying logger has its own)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# what DVC says around every stage it runs (the flow's own line names the stage): debug level
_DVC_CHATTER = re.compile(r"^(?:Running stage '[^']+':|> \S.*|(?:Generating|Updating) lock file "
                          r"'dvc\.lock'|Use `dvc push` to send your updates to remote storage\.)$")
# a stage's "error: ..." line, a traceback, and the header Python prints for a thread that died
# of an exception (Ray Train's cleaner thread, when its State API call times out on a busy host)
_ERROR_LINE = re.compile(r"^(?:error: |Traceback \(most recent call last\):|[\w.]+(?:Error|Exception): "
                         r"|Exception in thread \S+:$)")


def relayed() -> bool:
    """True when this process's lines are relayed by a logger that adds time and level."""
    return os.environ.get(RELAYED_ENV) == "1"


def stage_log_format() -> str:
    """The ``logging`` format of ``simclr`` (standalone: with time and logger name)."""
    return "%(levelname)s %(message)s" if relayed() else "%(asctime)s %(levelname)s %(name)s: %(message)s"


def progress_log_format() -> tuple[str, str | None]:
    """Format and date format of the pretraining progress lines (epoch, step, loss, ...)."""
    return ("pretrain: %(message)s", None) if relayed() else ("%(asctime)s pretrain: %(message)s",
                                                             "%H:%M:%S")


def strip_timestamp(line: str) -> str:
    """``line`` without a leading timestamp (the relaying logger adds its own)."""
    return _TIMESTAMP.sub("", line, count=1)


class LineLevels:
    """The logging level of each line of a process's output, and the line to log.

    ``LEVEL message`` (this project's relayed format) loses its level word; Ray's and DVC's
    levelled lines and glog's one-letter levels keep their text without their timestamp;
    Python ``warnings`` are warnings; ``error: ...`` lines and tracebacks are errors; DVC's
    ``Running stage`` / ``Updating lock file`` chatter is debug. Colour codes go. An indented
    line continues the line before it (a traceback, a warning's source line) and keeps its
    level; anything else is INFO.
    """

    def __init__(self) -> None:
        self._previous = logging.INFO

    def __call__(self, line: str) -> tuple[int, str]:
        line = _ANSI.sub("", line)
        if line[:1].isspace() and line.strip():
            return self._previous, line
        level, text = self._classify(line)
        self._previous = level
        return level, text

    @staticmethod
    def _classify(line: str) -> tuple[int, str]:
        glog = _GLOG.match(line)  # its timestamp sits inside the brackets, with the level
        if glog:
            return _GLOG_LEVELS[glog["level"]], glog["rest"]
        line = strip_timestamp(line)
        prefixed = _LEVEL_PREFIX.match(line)
        if prefixed:
            # "INFO message" loses the word (the logger shows it); DVC's "ERROR: ..." keeps it
            return _LEVELS[prefixed["level"]], line if prefixed["colon"] else prefixed["rest"]
        if _DVC_CHATTER.match(line):
            return logging.DEBUG, line
        if _PY_WARNING.match(line):
            return logging.WARNING, line
        if _ERROR_LINE.match(line):
            return logging.ERROR, line
        return logging.INFO, line


__all__ = ["RELAYED_ENV", "LineLevels", "progress_log_format", "relayed", "stage_log_format",
           "strip_timestamp"]
