"""Stage ``ingest``: the run function, and every bad input through the CLI (exit 2, one error
line naming the file or key, previous good output untouched, no temporary folders left)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from components.config import SourceConfig, config_from_dict
from components.data.sources import ingest_sources
from components.stages.cli import main
from components.stages.runner import stage_function
from tests.components.data.formats import (
    image_folder,
    random_idx_folder,
    write_cifar10,
    write_idx,
)

run = stage_function("ingest")  # the stage under the runner, untracked


@pytest.fixture
def tracking_uri(session_tracking_uri: str) -> str:
    """The CLI tracks every stage in MLflow: share one store across the session."""
    return session_tracking_uri


def params(tmp_path: Path, tracking_uri: str, source: dict, transfer: list | None = None) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({
        "paths": {"data": str(tmp_path / "data"), "outputs": str(tmp_path / "outputs")},
        "data": {"source": source, "transfer": transfer or [], "shard_size": 16},
        "tracking": {"tracking_uri": tracking_uri},
    }))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_run_ingests_source_and_transfer_sets(tmp_path: Path) -> None:
    idx = random_idx_folder(tmp_path / "idx", n_train=40, n_test=20, classes=4)
    cfg = config_from_dict({
        "paths": {"data": str(tmp_path / "data")},
        "data": {"source": {"kind": "idx", "path": str(idx), "name": "small"},
                 "transfer": [{"kind": "digits", "path": None, "name": "digits"}]},
    })
    result = run(cfg)
    assert (tmp_path / "data/datasets/small/manifest.json").is_file()
    assert (tmp_path / "data/transfer/digits/manifest.json").is_file()
    assert result.metrics["data.small.train_count"] == 40
    assert result.metrics["data.small.test_count"] == 20
    assert result.metrics["data.small.num_classes"] == 4
    assert result.metrics["data.digits.train_count"] + result.metrics["data.digits.test_count"] == 1797
    manifest = json.loads((tmp_path / "data/datasets/small/manifest.json").read_text())
    assert result.tags["data.small.hash"] == manifest["content_hash"]
    assert set(result.tags) == {"data.small.hash", "data.digits.hash"}
    assert manifest["source"]["kind"] == "idx" and manifest["source"]["path"] == str(idx)


def test_cli_ingest_succeeds(tmp_path: Path, tracking_uri: str, capsys) -> None:
    idx = random_idx_folder(tmp_path / "idx")
    p = params(tmp_path, tracking_uri, {"kind": "idx", "path": str(idx), "name": "small"})
    assert main(["ingest", "--params", str(p)]) == 0
    assert json.loads(capsys.readouterr().out)["data.small.train_count"] == 40


# Each case makes a bad source under ``root`` and returns (source config, text the error must name).
BadCase = Callable[[Path], tuple[dict, str]]


def _missing_path(root: Path) -> tuple[dict, str]:
    return {"kind": "idx", "path": str(root / "absent")}, f"{root / 'absent'}: source path not found"


def _truncated_idx(root: Path) -> tuple[dict, str]:
    folder = random_idx_folder(root / "idx")
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    return {"kind": "idx", "path": str(folder)}, f"{path}: truncated"


def _corrupt_idx(root: Path) -> tuple[dict, str]:
    folder = random_idx_folder(root / "idx", gz=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(b"\x89PNG" + path.read_bytes()[4:])
    return {"kind": "idx", "path": str(folder)}, f"{path}: not an IDX file"


def _count_mismatch(root: Path) -> tuple[dict, str]:
    folder = random_idx_folder(root / "idx")
    write_idx(folder, "train", np.zeros((7, 6, 6), np.uint8), np.zeros(9, np.uint8))
    return ({"kind": "idx", "path": str(folder)},
            f"{folder / 'train-images-idx3-ubyte.gz'}: 7 images but train-labels-idx1-ubyte.gz has 9")


def _empty_class(root: Path) -> tuple[dict, str]:
    folder = image_folder(root / "img", {"a": 3, "b": 3})
    (folder / "c").mkdir()
    return {"kind": "image_folder", "path": str(folder)}, f"{folder / 'c'}: class folder has no"


def _unreadable_image(root: Path) -> tuple[dict, str]:
    folder = image_folder(root / "img", {"a": 3, "b": 3})
    (folder / "b" / "001.png").write_bytes(b"\x00" * 64)
    return ({"kind": "image_folder", "path": str(folder)},
            f"{folder / 'b' / '001.png'}: unreadable image")


def _unknown_format(root: Path) -> tuple[dict, str]:
    folder = image_folder(root / "img", {"a": 3, "b": 3})
    return {"kind": "idx", "path": str(folder)}, f"{folder}: no IDX files"


def _corrupt_cifar(root: Path) -> tuple[dict, str]:
    folder = root / "cifar"
    write_cifar10(folder, batches=1)
    (folder / "data_batch_1").write_bytes(b"garbage")
    return {"kind": "cifar", "path": str(folder)}, f"{folder / 'data_batch_1'}: not a readable CIFAR"


BAD_CASES: dict[str, BadCase] = {
    "missing-path": _missing_path, "truncated-idx": _truncated_idx, "corrupt-idx": _corrupt_idx,
    "count-mismatch": _count_mismatch, "empty-class-folder": _empty_class,
    "unreadable-image": _unreadable_image, "unknown-format": _unknown_format,
    "corrupt-cifar": _corrupt_cifar,
}


def good_dataset(tmp_path: Path, name: str = "src", where: str = "datasets") -> Path:
    """A previous good ingest at ``data/<where>/<name>``; returns its folder."""
    folder = tmp_path / "data" / where / name
    source = SourceConfig(kind="idx", path=str(random_idx_folder(tmp_path / "good", seed=9)),
                          name=name)
    ingest_sources([(source, folder)], shard_size=16, split_seed=0)
    return folder


def assert_rejected(argv: list[str], expected: str, capsys, untouched: dict[Path, dict]) -> None:
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], errors
    for folder, before in untouched.items():
        assert snapshot(folder) == before
        leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]
        assert leftovers == [], leftovers


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_cli_bad_input_exits_2_names_file_and_keeps_previous_output(
        case: str, tmp_path: Path, tracking_uri: str, capsys) -> None:
    previous = good_dataset(tmp_path)
    before = snapshot(previous)
    source, expected = BAD_CASES[case](tmp_path / "bad")
    p = params(tmp_path, tracking_uri, {**source, "name": "src"})
    assert_rejected(["ingest", "--params", str(p)], expected, capsys, {previous: before})


def test_bad_transfer_source_leaves_every_data_set_untouched(tmp_path: Path, tracking_uri: str,
                                                             capsys) -> None:
    main_set = good_dataset(tmp_path, "src")
    transfer = good_dataset(tmp_path, "extra", where="transfer")
    before = {main_set: snapshot(main_set), transfer: snapshot(transfer)}
    fresh = random_idx_folder(tmp_path / "fresh", seed=3)  # a good, different main source
    source, expected = _truncated_idx(tmp_path / "bad")
    p = params(tmp_path, tracking_uri, {"kind": "idx", "path": str(fresh), "name": "src"},
               transfer=[{**source, "name": "extra"}])
    assert_rejected(["ingest", "--params", str(p)], expected, capsys, before)


def test_duplicate_transfer_names_are_a_config_error(tmp_path: Path, tracking_uri: str,
                                                     capsys) -> None:
    digits = {"kind": "digits", "path": None, "name": "d"}
    p = params(tmp_path, tracking_uri, digits, transfer=[digits, digits])
    assert_rejected(["ingest", "--params", str(p)], "data.transfer: duplicate source names ['d']",
                    capsys, {})


@pytest.mark.s3
@pytest.mark.parametrize("case", ["missing-prefix", "access-denied"])
def test_cli_bad_s3_source(case: str, tmp_path: Path, tracking_uri: str, capsys, s3_server,
                           monkeypatch) -> None:
    previous = good_dataset(tmp_path)
    before = snapshot(previous)
    s3_server.upload_folder(random_idx_folder(tmp_path / "up"), "s3://cli-bucket/present")
    if case == "missing-prefix":
        url, expected = "s3://cli-bucket/absent", "s3://cli-bucket/absent: no objects"
    else:
        for name, value in s3_server.env(denied=True).items():
            monkeypatch.setenv(name, value)
        url, expected = "s3://cli-bucket/present", "s3://cli-bucket/present: access denied"
    p = params(tmp_path, tracking_uri, {"kind": "idx", "path": url, "name": "src"})
    assert_rejected(["ingest", "--params", str(p)], expected, capsys, {previous: before})


def test_source_name_must_be_a_plain_folder_name(tmp_path: Path, tracking_uri: str, capsys) -> None:
    p = params(tmp_path, tracking_uri, {"kind": "digits", "path": None, "name": "../escape"})
    assert_rejected(["ingest", "--params", str(p)], "data.source.name: String should match",
                    capsys, {})
    assert not (tmp_path / "escape").exists()
