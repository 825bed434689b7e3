"""Projection head structure and shapes."""

from __future__ import annotations

import torch
from torch import nn

from components.models.head import ProjectionHead


def test_two_layer_head_is_linear_bn_relu_linear() -> None:
    head = ProjectionHead(64, 32, 128, layers=2)
    kinds = [type(m) for m in head.modules() if not isinstance(m, nn.Sequential | ProjectionHead)]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head(torch.randn(5, 64)).shape == (5, 128)


def test_three_layer_head_and_its_hidden_layer() -> None:
    head = ProjectionHead(64, 48, 16, layers=3)
    assert sum(isinstance(m, nn.Linear) for m in head.modules()) == 3
    h = torch.randn(4, 64)
    assert head(h).shape == (4, 16) and head.blocks[:1](h).shape == (4, 48)


def test_linear_head_and_no_head_of_the_head_study() -> None:
    """``layers=1``: one Linear to ``out_dim``; ``layers=0``: z = h (no parameters, the
    requested ``out_dim`` does not apply)."""
    linear = ProjectionHead(64, 64, 32, layers=1)
    assert [type(m) for m in linear.modules() if not isinstance(m, nn.Sequential | ProjectionHead)] \
        == [nn.Linear]
    assert linear(torch.randn(3, 64)).shape == (3, 32)
    none = ProjectionHead(64, 64, 32, layers=0)
    h = torch.randn(3, 64)
    assert torch.equal(none(h), h) and none.out_dim == 64
    assert not list(none.parameters())


def test_head_layers_of_the_model_config() -> None:
    from components.config import ModelConfig
    from components.models.simclr import build_simclr_model

    for layers, z_dim in ((0, 64), (1, 16), (2, 16)):
        model = build_simclr_model(ModelConfig(arch="small", width=0.25, head_layers=layers,
                                               projection_dim=16), in_channels=1, image_size=8)
        h, z = model(torch.rand(4, 1, 8, 8))
        assert h.shape == (4, 64) and z.shape == (4, z_dim), layers
