"""Bad input through `python -m flows` and `dvc repro`: exit 2, one error line, data untouched.

DVC deletes a stage's outputs before it runs; the data stages' outputs are ``persist`` and
ingest swaps data sets in atomically, so a corrupt image leaves the previous data in place.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.project import FAST_DATA_PARAMS, make_project_copy

pytestmark = pytest.mark.slow
DATA_STAGES = ("ingest", "subsets")


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def without_source_check(lock: Path | str) -> dict:
    """``dvc.lock`` (a path or its text) without the ``fingerprint`` stage's entry."""
    import yaml

    content = yaml.safe_load(lock.read_text() if isinstance(lock, Path) else lock)
    content["stages"].pop("fingerprint", None)
    return content


def image_folder_with_a_corrupt_image(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for index in range(6):
            pixels = rng.integers(0, 255, (12, 12), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{index}.png")
    (root / "b" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root / "b" / "5.png"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = make_project_copy(tmp_path_factory.mktemp("bad-input") / "project", FAST_DATA_PARAMS)
    project.dvc("repro", *DATA_STAGES)
    project.commit("data")
    return project


def test_corrupt_image_through_the_flow_and_dvc_repro_leaves_the_data(project, tmp_path):
    corrupt = image_folder_with_a_corrupt_image(tmp_path / "images")
    data_before = files_under(project.root / "data")
    params_before = (project.root / "params.yaml").read_text()
    lock_before = (project.root / "dvc.lock").read_text()
    assert any(name.startswith("datasets/digits/") for name in data_before)
    source = ["data.source.kind=image_folder", f"data.source.path={tmp_path / 'images'}"]

    flow = project.run(sys.executable, "-m", "flows", "--stages", *DATA_STAGES,
                       *[arg for setting in source for arg in ("--set", setting)],
                       env={"PREFECT_API_URL": ""}, check=False)
    assert flow.returncode == 2, flow.stderr[-3000:]
    errors = [line for line in flow.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(corrupt) in errors[0] and "stage ingest" in errors[0]
    assert "Traceback" not in flow.stderr and "Traceback" not in flow.stdout
    assert files_under(project.root / "data") == data_before
    assert (project.root / "params.yaml").read_text() == params_before  # no stage ran on it
    assert (project.root / "dvc.lock").read_text() == lock_before

    project.update_params({"data": {"source": {"kind": "image_folder",
                                               "path": str(tmp_path / "images")}}})
    repro = project.dvc("repro", *DATA_STAGES, check=False)
    assert repro.returncode != 0
    assert str(corrupt) in repro.stdout + repro.stderr
    assert files_under(project.root / "data") == data_before
    # the source check before ingest did run (and is recorded); nothing after it
    assert without_source_check(project.root / "dvc.lock") == without_source_check(lock_before)
    (project.root / "params.yaml").write_text(params_before)
