"""The encoder f: a ResNet (torchvision's blocks) whose representation h is the pooled features.

Depths 18/34/50 use torchvision's ``BasicBlock`` / ``Bottleneck`` and layer counts; every
channel count is scaled by ``width`` (SimCLR's 2x / 4x). With width 1, 3 channels and the
ImageNet stem the parameter names and shapes equal ``torchvision.models.resnet18/34/50``
without ``fc``. The stem follows the image size: the CIFAR stem (3x3 conv, stride 1, no
max-pool) for images of at most ``CIFAR_STEM_MAX_SIZE`` px, else the ImageNet stem (7x7 conv,
stride 2, 3x3 max-pool). ``stride2`` (3x3 conv, stride 2, no max-pool) is the CPU-budget middle
ground for small images: a quarter of the CIFAR stem's FLOPs, half its downsampling is the
ImageNet stem's.

``small`` is a CPU-sized ResNet-10: BasicBlocks [1, 1, 1, 1] with widths 32/64/128/256 (x width),
h of 256 dims at width 1. Its channel counts are multiples of 32 (vectorises well in oneDNN);
most of its FLOPs are in 3x3 convs with at least 32 input channels, so the 1-channel stem conv
is a small share of the time.

``small-bottleneck`` is the same four single-block stages with ResNet-50's ``Bottleneck``
(1x1 reduce, 3x3, 1x1 expand x4) on widths 16/32/64/128: h is twice ``small``'s at the same
width (256 dims at width 0.5) for under half the FLOPs, because the 3x3 convs run on half the
channels and a cheap 1x1 expansion makes the wide output. Its wall-clock cost is about
``small``'s (the 4x-wide activations cost memory traffic). A linear probe gains from the
wider h (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from components.config import ModelConfig

CIFAR_STEM_MAX_SIZE = 64

# arch -> (block, blocks per stage, stage widths at width 1, stem width at width 1)
ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int], list[int], int]] = {
    "small": (BasicBlock, [1, 1, 1, 1], [32, 64, 128, 256], 32),
    "small-bottleneck": (Bottleneck, [1, 1, 1, 1], [16, 32, 64, 128], 32),
    "resnet18": (BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], 64),
    "resnet34": (BasicBlock, [3, 4, 6, 3], [64, 128, 256, 512], 64),
    "resnet50": (Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], 64),
}


def scaled(channels: int, width: float) -> int:
    """Channel count times the width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


Stem = Literal["cifar", "stride2", "imagenet"]


def resolve_stem(stem: str, image_size: int) -> Stem:
    if stem == "auto":
        return "cifar" if image_size <= CIFAR_STEM_MAX_SIZE else "imagenet"
    if stem not in ("cifar", "stride2", "imagenet"):
        raise ValueError(f"unknown stem {stem!r}")
    return stem  # type: ignore[return-value]


class Encoder(nn.Module):
    """ResNet trunk: ``forward(x: (B, C, H, W)) -> h: (B, feature_dim)`` (global average pool)."""

    def __init__(
        self,
        arch: str,
        width: float,
        in_channels: int,
        stem: Stem,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHS)}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        block, blocks, widths, stem_width = ARCHS[arch]
        self.arch, self.width, self.in_channels, self.stem = arch, width, in_channels, stem
        self.inplanes = scaled(stem_width, width)
        if stem in ("cifar", "stride2"):
            stride = 1 if stem == "cifar" else 2
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, 3, stride=stride, padding=1,
                                   bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, scaled(widths[0], width), blocks[0], 1)
        self.layer2 = self._make_layer(block, scaled(widths[1], width), blocks[1], 2)
        self.layer3 = self._make_layer(block, scaled(widths[2], width), blocks[2], 2)
        self.layer4 = self._make_layer(block, scaled(widths[3], width), blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim: int = self.inplanes
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = out
        layers += [block(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def build_encoder(cfg: ModelConfig, in_channels: int, image_size: int) -> Encoder:
    """Encoder for ``cfg.arch`` / ``cfg.width``; the stem is resolved from ``image_size``."""
    return Encoder(cfg.arch, cfg.width, in_channels, resolve_stem(cfg.stem, image_size))
