"""Encoder checkpoints: exact round trip and clear errors that name the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.config import ModelConfig
from components.errors import PipelineError
from components.models.checkpoint import load_encoder, save_encoder
from components.models.encoder import build_encoder

CFG = ModelConfig(arch="small", width=0.25)


def _trained_encoder():
    torch.manual_seed(0)
    enc = build_encoder(CFG, 1, 28)
    enc.train()
    with torch.no_grad():
        enc(torch.rand(16, 1, 28, 28))  # move BN running statistics off their defaults
    return enc.eval()


def test_round_trip_gives_identical_outputs(tmp_path) -> None:
    enc = _trained_encoder()
    meta = {"epoch": 3, "loss": np.float32(1.5), "hist": [torch.tensor(0.25)]}
    path = save_encoder(tmp_path / "sub" / "encoder.pt", enc, CFG, 1, 28, meta)
    loaded, spec = load_encoder(path, expect=CFG)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(enc(x), loaded(x))
    assert not loaded.training
    assert (spec.model, spec.in_channels, spec.image_size) == (CFG, 1, 28)
    assert spec.meta == {"epoch": 3, "loss": 1.5, "hist": [0.25]}
    assert [p.name for p in path.parent.iterdir()] == ["encoder.pt"]  # no temporary left over
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "simclr-encoder/1" and raw["model"]["arch"] == "small"


def test_mismatched_architecture_names_the_file(tmp_path) -> None:
    path = save_encoder(tmp_path / "encoder.pt", _trained_encoder(), CFG, 1, 28, {})
    with pytest.raises(PipelineError, match=r"encoder\.pt.*width=0\.25 \(expected 0\.5\)"):
        load_encoder(path, expect=ModelConfig(arch="small", width=0.5))
    with pytest.raises(PipelineError, match=r"encoder\.pt.*arch='small' \(expected 'resnet18'\)"):
        load_encoder(path, expect=ModelConfig(arch="resnet18", width=0.25))


def test_weights_that_do_not_fit_the_declared_encoder(tmp_path) -> None:
    path = tmp_path / "encoder.pt"
    save_encoder(path, _trained_encoder(), CFG, 1, 28, {})
    raw = torch.load(path, weights_only=True)
    raw["model"]["width"] = 0.5  # declares a wider net than the weights hold
    torch.save(raw, path)
    with pytest.raises(PipelineError, match=r"encoder\.pt: weights do not fit"):
        load_encoder(path)


def test_missing_and_foreign_files(tmp_path) -> None:
    with pytest.raises(PipelineError, match=r"nope\.pt: encoder checkpoint not found"):
        load_encoder(tmp_path / "nope.pt")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(PipelineError, match=r"other\.pt: expected format"):
        load_encoder(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineError, match=r"junk\.pt: not a readable checkpoint"):
        load_encoder(junk)
