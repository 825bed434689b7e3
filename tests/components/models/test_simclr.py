"""SimCLR model assembly from the config."""

from __future__ import annotations

import torch

from components.config import ModelConfig
from components.models.simclr import build_simclr_model


def test_build_returns_h_and_z() -> None:
    model = build_simclr_model(ModelConfig(arch="small", width=0.25, head_layers=3), 1, 28)
    h, z = model(torch.rand(4, 1, 28, 28))
    assert h.shape == (4, model.encoder.feature_dim) == (4, 64)
    assert z.shape == (4, 128) and model.head.hidden_dim == 64


def test_hidden_dim_and_projection_dim_from_config() -> None:
    cfg = ModelConfig(arch="small", width=0.25, head_hidden_dim=40, projection_dim=24)
    model = build_simclr_model(cfg, 3, 16)
    _, z = model(torch.rand(3, 3, 16, 16))
    assert z.shape == (3, 24) and model.head.hidden_dim == 40
