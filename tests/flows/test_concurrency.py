"""Two `python -m flows` on one checkout, started together: one runs, the other refuses.

The run lock is taken before Prefect touches its database (``<project>/.prefect``, fresh here),
so the second never races the first's database migration.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.project import FAST_DATA_PARAMS, make_project_copy

pytestmark = pytest.mark.slow


def test_second_flow_refuses_naming_the_first(tmp_path):
    project = make_project_copy(tmp_path / "project", FAST_DATA_PARAMS)
    env = {**os.environ, **project.env, "PREFECT_API_URL": "",
           "PREFECT_HOME": str(project.root / ".prefect")}
    command = [sys.executable, "-m", "flows", "--preset", "tiny", "--stages", "ingest"]
    flows = [subprocess.Popen(command, cwd=project.root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(proc, *proc.communicate(timeout=600)) for proc in flows]
    codes = sorted(proc.returncode for proc, _, _ in results)
    assert codes == [0, 2], [(proc.returncode, err[-2000:]) for proc, _, err in results]
    (ran,) = [(proc, out, err) for proc, out, err in results if proc.returncode == 0]
    (refused,) = [(proc, out, err) for proc, out, err in results if proc.returncode == 2]
    assert ran[1] == ""  # everything goes to the log (stderr), ending with the closing summary
    assert "pipeline finished: ingest ran" in ran[2]
    assert refused[2].strip().splitlines() == [
        line for line in refused[2].strip().splitlines() if line.startswith("error:")]
    assert f"another run holds {project.root / '.simclr-run.lock'}: pid {ran[0].pid}" in refused[2]
    assert "python -m flows --preset tiny" in refused[2] and "started 20" in refused[2]
    for _, out, err in results:
        assert "Traceback" not in out + err and "alembic" not in (out + err).lower()
