"""Encoder output sizes for every depth / width / stem / channel count, and torchvision parity."""

from __future__ import annotations

import pytest
import torch
import torchvision

from components.config import ModelConfig
from components.models.encoder import build_encoder, resolve_stem

# (arch, width) -> representation size
DIMS = {
    ("small", 1.0): 256,
    ("small", 0.25): 64,
    ("small-bottleneck", 1.0): 512,
    ("small-bottleneck", 0.5): 256,
    ("resnet18", 0.25): 128,
    ("resnet18", 1.0): 512,
    ("resnet34", 0.125): 64,
    ("resnet50", 0.125): 256,
}


CASES = [
    (arch, width, channels, stem, size)
    for arch, width in DIMS
    for channels in (1, 3)
    for stem, size in (("auto", 16), ("imagenet", 40))
    # the deep nets: each stem and channel count once, on tiny inputs
    if arch in ("small", "small-bottleneck", "resnet18") or (channels == 1) == (stem == "auto")
]


@pytest.mark.parametrize(("arch", "width", "channels", "stem", "size"), CASES)
def test_output_dims(arch: str, width: float, channels: int, stem: str, size: int) -> None:
    enc = build_encoder(ModelConfig(arch=arch, width=width, stem=stem), channels, size)
    assert enc.stem == ("cifar" if stem == "auto" else "imagenet")
    assert enc.feature_dim == DIMS[(arch, width)]
    enc.eval()
    with torch.no_grad():
        h = enc(torch.rand(2, channels, size, size))
    assert h.shape == (2, DIMS[(arch, width)]) and h.dtype == torch.float32


def test_stem_follows_image_size() -> None:
    assert resolve_stem("auto", 28) == "cifar" and resolve_stem("auto", 224) == "imagenet"
    enc = build_encoder(ModelConfig(arch="small", width=0.25), 1, 28)
    assert enc.conv1.kernel_size == (3, 3) and enc.conv1.stride == (1, 1)
    assert isinstance(enc.maxpool, torch.nn.Identity) and enc.conv1.in_channels == 1
    big = build_encoder(ModelConfig(arch="small", width=0.25), 3, 96)
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, torch.nn.MaxPool2d)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_width_one_imagenet_stem_matches_torchvision(arch: str) -> None:
    ours = build_encoder(ModelConfig(arch=arch, stem="imagenet"), 3, 224).state_dict()
    ref = getattr(torchvision.models, arch)(weights=None).state_dict()
    ref = {k: v.shape for k, v in ref.items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == ref


def test_width_multiplier_scales_every_stage() -> None:
    one = build_encoder(ModelConfig(arch="resnet18", width=1.0), 3, 32)
    two = build_encoder(ModelConfig(arch="resnet18", width=2.0), 3, 32)
    assert two.feature_dim == 2 * one.feature_dim
    assert two.conv1.out_channels == 2 * one.conv1.out_channels


def test_stride2_stem_halves_the_resolution_once() -> None:
    enc = build_encoder(ModelConfig(arch="small", width=0.5, stem="stride2"), 1, 28)
    assert enc.stem == "stride2" and enc.conv1.stride == (2, 2) and enc.conv1.kernel_size == (3, 3)
    assert isinstance(enc.maxpool, torch.nn.Identity)
    stem_out = enc.relu(enc.bn1(enc.conv1(torch.rand(2, 1, 28, 28))))
    assert stem_out.shape[-2:] == (14, 14)
    assert enc(torch.rand(2, 1, 28, 28)).shape == (2, enc.feature_dim)


def test_small_bottleneck_doubles_h_for_fewer_flops() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    def flops_and_dim(arch: str) -> tuple[int, int]:
        enc = build_encoder(ModelConfig(arch=arch, width=0.5, stem="stride2"), 1, 28)
        with FlopCounterMode(display=False) as counter:
            enc(torch.rand(4, 1, 28, 28)).sum().backward()
        return counter.get_total_flops(), enc.feature_dim

    basic_flops, basic_dim = flops_and_dim("small")
    bottleneck_flops, bottleneck_dim = flops_and_dim("small-bottleneck")
    assert (basic_dim, bottleneck_dim) == (128, 256)
    assert bottleneck_flops < 0.6 * basic_flops  # measured: 0.46x
