"""Batched SimCLR augmentation: shapes, independence, determinism, parameter statistics,
and each colour op against torchvision's reference implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from components.augment import (
    CropFlipAugment,
    SimCLRAugment,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    crop_resize_flip,
    gaussian_blur,
    grey,
    sample_crops,
    save_view_grid,
    simple_augment,
    to_float_tensor,
)
from components.config import AugmentConfig


def _images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=gen)


def test_to_float_tensor() -> None:
    raw = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    x = to_float_tensor(raw)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32 and x.is_contiguous()
    assert x[1, 2, 3, 4].item() == pytest.approx(raw[1, 3, 4, 2] / 255)
    with pytest.raises(ValueError, match="uint8"):
        to_float_tensor(raw.astype(np.float32))


@pytest.mark.parametrize(("channels", "size", "out"), [(1, 28, 28), (3, 32, 32), (3, 48, 40)])
def test_shapes_dtype_range(channels: int, size: int, out: int) -> None:
    aug = SimCLRAugment(AugmentConfig(color_strength=1.0, blur=True), out, channels)
    y = aug(_images(16, channels, size), torch.Generator().manual_seed(0))
    assert y.shape == (16, channels, out, out) and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1 and torch.isfinite(y).all()


def test_uint8_shaped_input_and_wrong_channels_are_rejected() -> None:
    aug = SimCLRAugment(AugmentConfig(), 28, 1)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        aug(torch.rand(2, 3, 28, 28))


def test_seeded_views_are_reproducible_and_differ_between_calls() -> None:
    aug = SimCLRAugment(AugmentConfig(color_strength=1.0, blur=True), 40, 3)
    x = _images(8, 3, 40)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    gen = torch.Generator().manual_seed(5)
    v1, v2 = aug(x, gen), aug(x, gen)
    assert torch.equal(v1, a) and not torch.allclose(v1, v2)
    torch.manual_seed(3)
    g1 = aug(x)
    torch.manual_seed(3)
    assert torch.equal(g1, aug(x))  # without a generator: torch's global RNG


def test_parameters_are_drawn_per_sample() -> None:
    aug = SimCLRAugment(AugmentConfig(color_strength=1.0, blur=True), 64, 3)
    params = aug.sample(64, 64, 64, torch.Generator().manual_seed(0))
    assert params.boxes[:, 2].unique().numel() == 64  # 64 different crop widths
    assert 0 < params.flip.sum() < 64 and 0 < params.greyscale.sum() < 64
    assert params.factors[:, 0].unique().numel() == 64
    assert len({tuple(o.tolist()) for o in params.order}) > 10  # many different op orders
    # the same image repeated gives different views within one batch
    x = _images(1, 3, 64).repeat(16, 1, 1, 1)
    y = aug(x, torch.Generator().manual_seed(1))
    diffs = [(y[0] - y[i]).abs().max().item() for i in range(1, 16)]
    assert min(diffs) > 1e-3


def test_crop_statistics_within_configured_ranges() -> None:
    n, h, w = 20_000, 28, 28
    gen = torch.Generator().manual_seed(0)
    for scale, ratio in [((0.2, 0.9), (0.6, 1.5)), ((0.08, 1.0), (3 / 4, 4 / 3))]:
        x0, y0, bw, bh = sample_crops(n, h, w, scale, ratio, gen).unbind(1)
        area, aspect = bw * bh / (h * w), bw / bh
        assert area.min() >= scale[0] - 1e-9 and area.max() <= scale[1] + 1e-9
        assert aspect.min() >= ratio[0] - 1e-9 and aspect.max() <= ratio[1] + 1e-9
        assert (x0 >= 0).all() and (y0 >= 0).all()
        assert (x0 + bw <= w + 1e-9).all() and (y0 + bh <= h + 1e-9).all()
    # where every try fits (area * aspect <= 1), the area fraction is U(low, high) and the log
    # aspect is uniform; a ratio range that always fits makes that checkable
    _, _, bw, bh = sample_crops(n, h, w, (0.2, 0.9), (0.9, 1.1), gen).unbind(1)
    area, aspect = bw * bh / (h * w), bw / bh
    assert area.mean().item() == pytest.approx(0.55, abs=0.01)
    assert area.std().item() == pytest.approx(0.7 / math.sqrt(12), abs=0.01)
    assert aspect.log().mean().item() == pytest.approx(0.0, abs=0.005)


def test_crop_falls_back_to_the_whole_image_when_nothing_fits() -> None:
    boxes = sample_crops(50, 10, 40, (1.0, 1.0), (1.0, 1.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(boxes[0], torch.tensor([15.0, 0.0, 10.0, 10.0], dtype=torch.float64))


def test_jitter_statistics_within_configured_ranges() -> None:
    cfg = AugmentConfig(color_strength=0.5, jitter_p=0.8, grayscale_p=0.2, blur=True)
    params = SimCLRAugment(cfg, 64, 3).sample(20_000, 64, 64, torch.Generator().manual_seed(0))
    for k in range(3):
        f = params.factors[:, k]
        assert f.min() >= 0.6 and f.max() <= 1.4 and f.mean().item() == pytest.approx(1.0, abs=0.01)
    hue = params.factors[:, 3]
    assert hue.min() >= -0.1 and hue.max() <= 0.1
    assert params.jitter.float().mean().item() == pytest.approx(0.8, abs=0.015)
    assert params.greyscale.float().mean().item() == pytest.approx(0.2, abs=0.015)
    assert params.flip.float().mean().item() == pytest.approx(0.5, abs=0.015)
    assert params.blur.float().mean().item() == pytest.approx(0.5, abs=0.015)
    assert params.sigma.min() >= 0.1 and params.sigma.max() <= 2.0
    assert (params.order.sort(dim=1).values == torch.arange(4)).all()


def test_blur_is_off_by_default_for_small_images_and_grey_gets_no_greyscale() -> None:
    small = SimCLRAugment(AugmentConfig(), 28, 1)
    params = small.sample(500, 28, 28, torch.Generator().manual_seed(0))
    assert not params.blur.any() and not params.greyscale.any()
    assert small.jitter_ops == (0, 1)  # brightness and contrast only
    assert SimCLRAugment(AugmentConfig(), 96, 3).blur_on
    assert blur_kernel_size(224) == 23 and blur_kernel_size(28) == 3


def test_identity_parameters_reproduce_the_image_and_its_mirror() -> None:
    x = _images(3, 3, 16)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 3, dtype=torch.float64)
    y = crop_resize_flip(x, boxes, torch.tensor([False, True, False]), 16)
    torch.testing.assert_close(y[0], x[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(y[1], x[1].flip(-1), atol=1e-5, rtol=0)


def test_crop_picks_the_box() -> None:
    x = torch.arange(64.0).view(1, 1, 8, 8)
    box = torch.tensor([[2.0, 4.0, 4.0, 2.0]], dtype=torch.float64)  # x0, y0, w, h
    y = crop_resize_flip(x, box, torch.tensor([False]), 4)
    # output pixel (i, j) samples the input at pixel-centre coordinates (3.75 + i / 2, 2 + j);
    # x is linear in both, so bilinear resampling reproduces it exactly
    rows = (3.75 + 0.5 * torch.arange(4.0))[:, None]
    want = rows * 8 + 2 + torch.arange(4.0)[None, :]
    torch.testing.assert_close(y[0, 0], want)


@pytest.mark.parametrize("seed", [0, 1])
def test_colour_ops_match_torchvision(seed: int) -> None:
    x = _images(6, 3, 12, seed)
    gen = torch.Generator().manual_seed(seed)
    f = torch.rand(6, generator=gen) * 1.2 + 0.4
    shift = torch.rand(6, generator=gen) - 0.5
    ours = {
        "b": adjust_brightness(x.clone(), f),
        "c": adjust_contrast(x.clone(), f),
        "s": adjust_saturation(x.clone(), f),
        "h": adjust_hue(x.clone(), shift),
    }
    for i in range(6):
        fi = f[i].item()
        torch.testing.assert_close(ours["b"][i], TF.adjust_brightness(x[i], fi), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours["c"][i], TF.adjust_contrast(x[i], fi), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours["s"][i], TF.adjust_saturation(x[i], fi), atol=1e-5, rtol=0)
        want = TF.adjust_hue(x[i], shift[i].item())
        torch.testing.assert_close(ours["h"][i], want, atol=1e-4, rtol=0)


def test_grey_image_contrast_matches_torchvision() -> None:
    x = _images(2, 1, 10)
    f = torch.tensor([0.5, 1.5])
    y = adjust_contrast(x.clone(), f)
    for i in range(2):
        torch.testing.assert_close(y[i], TF.adjust_contrast(x[i], f[i].item()), atol=1e-5, rtol=0)


def test_gaussian_blur_matches_torchvision() -> None:
    x = _images(3, 3, 20)
    sigma = torch.tensor([0.3, 1.0, 2.0])
    y = gaussian_blur(x, sigma, 5)
    for i in range(3):
        want = TF.gaussian_blur(x[i], [5, 5], [sigma[i].item()] * 2)
        torch.testing.assert_close(y[i], want, atol=1e-5, rtol=0)


def test_colour_strength_zero_and_full_crop_leave_pixels_alone() -> None:
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), color_strength=0.0,
                        grayscale_p=0.0, flip_p=0.0, blur=False)
    x = _images(4, 3, 16)
    torch.testing.assert_close(SimCLRAugment(cfg, 16, 3)(x), x, atol=1e-5, rtol=0)


def test_crop_flip_augment_and_simple_augment() -> None:
    x = _images(5, 1, 28)
    y = CropFlipAugment(24)(x, torch.Generator().manual_seed(0))
    assert y.shape == (5, 1, 24, 24)
    a = simple_augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, simple_augment(x, torch.Generator().manual_seed(1)))


def test_save_view_grid(tmp_path) -> None:
    raw = (np.random.default_rng(0).random((5, 28, 28, 1)) * 255).astype(np.uint8)
    path = save_view_grid(raw, SimCLRAugment(AugmentConfig(), 28, 1), tmp_path / "views.png")
    with Image.open(path) as img:
        width, height = img.size
    # 5 columns and 3 rows of 28 px images enlarged 4x, with 2 px padding
    assert (width, height) == (2 + 5 * (4 * 28 + 2), 2 + 3 * (4 * 28 + 2))


# ----------------------------------------------------------------------------- default = legacy
def _legacy_view(cfg: AugmentConfig, size: int, channels: int, x: torch.Tensor,
                 gen: torch.Generator) -> torch.Tensor:
    """A frozen copy of SimCLRAugment's view as first released (crop + flip, colour, greyscale,
    blur), written with the public primitives: every draw in the same order and shape.

    The default config's views (DVC outputs, determinism tests) must stay bit-identical to this.
    Do not edit it to follow SimCLRAugment; a change here is a change of every default view.
    """
    n, _, height, width = x.shape

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=gen, dtype=torch.float64) * (high - low) + low

    s = cfg.color_strength
    ranges = [(max(0.0, 1 - 0.8 * s), 1 + 0.8 * s)] * 3 + [(-min(0.5, 0.2 * s), min(0.5, 0.2 * s))]
    blur_on = size > 32 if cfg.blur == "auto" else cfg.blur in (True, "on")
    boxes = sample_crops(n, height, width, cfg.crop_scale, cfg.crop_ratio, gen)
    flip = torch.rand(n, generator=gen) < cfg.flip_p
    jitter = (torch.rand(n, generator=gen) < cfg.jitter_p) & (s > 0)
    factors = torch.stack([uniform(low, high).float() for low, high in ranges], dim=1)
    order = torch.rand(n, 4, generator=gen).argsort(dim=1)
    greyscale = (torch.rand(n, generator=gen) < cfg.grayscale_p) & (channels == 3)
    blur = (torch.rand(n, generator=gen) < cfg.blur_p) & blur_on
    sigma = uniform(*cfg.blur_sigma).float()

    ops = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue][: 2 if channels == 1 else 4]
    y = crop_resize_flip(x.float(), boxes, flip, size)
    for position in range(4):
        for k, op in enumerate(ops):
            idx = (jitter & (order[:, position] == k)).nonzero().squeeze(1)
            if idx.numel():
                y[idx] = op(y[idx], factors[idx, k])
    idx = greyscale.nonzero().squeeze(1)
    if idx.numel():
        y[idx] = grey(y[idx]).expand(-1, 3, -1, -1)
    idx = blur.nonzero().squeeze(1)
    if idx.numel():
        y[idx] = gaussian_blur(y[idx], sigma[blur], blur_kernel_size(size))
    return y.clamp_(0, 1)


LEGACY_CASES = [
    (AugmentConfig(color_strength=1.0, blur=True), 40, 3, 44),
    (AugmentConfig(), 28, 1, 28),
    (AugmentConfig(), 32, 3, 36),  # blur "auto": off at 32 px
    (AugmentConfig(crop_scale=(0.2, 1.0), blur_p=1.0, grayscale_p=0.5), 48, 3, 40),
]


@pytest.mark.parametrize(("cfg", "size", "channels", "in_size"), LEGACY_CASES)
@pytest.mark.parametrize("seed", [0, 123])
def test_default_composition_is_bit_identical_to_the_legacy_view(
    cfg: AugmentConfig, size: int, channels: int, in_size: int, seed: int
) -> None:
    x = _images(12, channels, in_size, seed=seed + 1)
    aug = SimCLRAugment(cfg, size, channels)
    ours, ref = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    for _ in range(2):  # two views from one generator: the second depends on the draws' count
        assert torch.equal(aug(x, ours), _legacy_view(cfg, size, channels, x, ref))
    assert torch.equal(ours.get_state(), ref.get_state())  # the same number of draws


@pytest.mark.parametrize(
    ("cfg", "size", "channels", "means", "std"),
    [
        (AugmentConfig(color_strength=1.0, blur=True), 40, 3,
         [0.66824, 0.7207, 0.21303, 0.75581, 0.66119, 0.34615], 0.26491),
        (AugmentConfig(), 28, 1, [0.63991, 0.60948, 0.34772, 0.67903, 0.5904, 0.44258], 0.24227),
    ],
)
def test_default_views_match_the_recorded_fingerprint(
    cfg: AugmentConfig, size: int, channels: int, means: list[float], std: float
) -> None:
    """Guards the legacy reference itself (primitives, RNG): per-image means recorded with the
    first release for seed 123 on a fixed input; a tolerance, as float rounding may differ
    between CPUs."""
    x = torch.rand(6, channels, 44, 44, generator=torch.Generator().manual_seed(0))
    y = SimCLRAugment(cfg, size, channels)(x, torch.Generator().manual_seed(123)).double()
    assert y.mean(dim=(1, 2, 3)).tolist() == pytest.approx(means, abs=2e-5)
    assert y.std().item() == pytest.approx(std, abs=2e-5)
