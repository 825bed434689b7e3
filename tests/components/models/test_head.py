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
