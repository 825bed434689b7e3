"""``python -m flows`` (the README's pipeline command) on Prefect's temporary API, no server."""

from __future__ import annotations

import sys

import pytest

from tests.project import FAST_DATA_PARAMS, make_project_copy

pytestmark = pytest.mark.slow


def test_python_m_flows_runs_the_selected_stages_then_rejects_a_bad_override(tmp_path):
    project = make_project_copy(tmp_path / "project", FAST_DATA_PARAMS)
    env = {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": ""}

    ran = project.run(sys.executable, "-m", "flows", "--preset", "tiny", "--stages", "ingest",
                      env=env)
    # the run ends with its closing summary (Prefect's console log is stderr), stdout stays empty
    assert "pipeline finished: ingest ran" in ran.stderr and ran.stdout == "", ran.stderr
    assert "\x1b[" not in ran.stderr  # not a terminal: no colour codes
    assert (project.root / "mlflow.db").is_file() and (tmp_path / "prefect-home").is_dir()

    bad = project.run(sys.executable, "-m", "flows", "--set", "subsets.fractions=[2.0]",
                      env=env, check=False)
    assert bad.returncode == 2  # bad input: one error line naming the key, no traceback
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "subsets.fractions" in errors[0]
    assert "Traceback" not in bad.stderr
