"""The augmentation study's ops (paper, Figure 5) against NumPy / SciPy references, and the
``AugmentConfig.ops`` switch that composes a view from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from components.augment import (
    SimCLRAugment,
    add_gaussian_noise,
    crop_resize_flip,
    cutout,
    rotate_quarter_turns,
    sample_cutouts,
    sobel,
)
from components.config import AUGMENT_OPS, AugmentConfig, config_from_dict
from components.errors import ConfigError

_LUMA = np.array([0.2989, 0.587, 0.114])


def _images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=gen)


# ----------------------------------------------------------------------------- primitives
def test_rotation_matches_numpy_rot90() -> None:
    x = _images(8, 3, 9)
    turns = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    y = rotate_quarter_turns(x, turns)
    for i in range(8):
        want = np.rot90(x[i].numpy(), int(turns[i]), axes=(-2, -1))
        assert np.array_equal(y[i].numpy(), want)
    assert torch.equal(x, _images(8, 3, 9))  # the input is left alone
    with pytest.raises(ValueError, match="square"):
        rotate_quarter_turns(torch.rand(1, 1, 4, 5), torch.tensor([1]))


@pytest.mark.parametrize("channels", [1, 3])
def test_sobel_matches_scipy(channels: int) -> None:
    x = _images(5, channels, 12, seed=channels)
    x[4] = 0.3  # a flat image: no gradient anywhere
    y = sobel(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    for i in range(5):
        img = x[i].double().numpy()
        luma = img[0] if channels == 1 else np.tensordot(_LUMA, img, axes=1)
        # scipy's "nearest" border = replicate padding; the magnitude ignores the sign convention
        mag = np.hypot(ndimage.sobel(luma, axis=0, mode="nearest"),
                       ndimage.sobel(luma, axis=1, mode="nearest"))
        want = mag / mag.max() if mag.max() > 0 else mag
        for c in range(channels):
            np.testing.assert_allclose(y[i, c].numpy(), want, atol=1e-5, rtol=0)
    assert y[:4].amax(dim=(1, 2, 3)).allclose(torch.ones(4)) and (y[4] == 0).all()


def test_cutout_zeroes_exactly_one_square_of_the_sampled_size() -> None:
    n, size = 16, 20
    x = _images(n, 3, size) * 0.9 + 0.1  # no zero pixels before the cutout
    squares = sample_cutouts(n, size, size, (0.1, 0.6), torch.Generator().manual_seed(0))
    top, left, side = squares.unbind(1)
    assert squares.dtype == torch.int64 and side.unique().numel() > 3  # sizes differ per image
    assert len({(t, u) for t, u in zip(top.tolist(), left.tolist(), strict=True)}) > 10
    assert (side >= 2).all() and (side <= 12).all()  # round(0.1 x 20), round(0.6 x 20)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + side <= size).all() and (left + side <= size).all()
    y = cutout(x, squares)
    for i in range(n):
        t, u, s = squares[i].tolist()
        inside = torch.zeros(size, size, dtype=torch.bool)
        inside[t:t + s, u:u + s] = True
        assert (y[i][:, inside] == 0).all()
        assert torch.equal(y[i][:, ~inside], x[i][:, ~inside])  # the rest unchanged, bit for bit


def test_cutout_positions_are_uniform_and_fit_non_square_images() -> None:
    gen = torch.Generator().manual_seed(1)
    squares = sample_cutouts(20_000, 10, 30, (0.5, 0.5), gen)
    top, left, side = squares.unbind(1)
    assert (side == 5).all()  # a fraction of the short side
    assert set(top.tolist()) == set(range(6)) and set(left.tolist()) == set(range(26))
    counts = torch.bincount(top, minlength=6).double()
    assert (counts / counts.mean() - 1).abs().max() < 0.08


def test_noise_has_the_sampled_std_per_image_and_stays_in_range() -> None:
    n = 6
    x = torch.full((n, 3, 64, 64), 0.5)
    gen = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.01, 0.03, 0.05, 0.08, 0.12, 0.3])
    noise = torch.randn(n, 3, 64, 64, generator=gen)
    y = add_gaussian_noise(x, noise, sigma)
    assert y.min() >= 0 and y.max() <= 1
    std = (y - 0.5).flatten(1).std(dim=1)
    # 12288 pixels: the std's sampling error is about 0.6%; clamping at 0 and 1 (1.7 sigma for
    # the last image) shrinks that one's std
    torch.testing.assert_close(std[:5], sigma[:5], rtol=0.03, atol=0)
    assert 0.2 < std[5] < 0.3 and ((y[5] == 0) | (y[5] == 1)).float().mean() > 0.05
    assert torch.equal(add_gaussian_noise(x, noise, torch.zeros(n)), x)


# ----------------------------------------------------------------------------- the ops switch
def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_no_ops_is_the_identity_or_a_plain_resize() -> None:
    x = _images(4, 3, 16)
    assert torch.equal(SimCLRAugment(AugmentConfig(ops=[]), 16, 3)(x, _gen()), x)
    whole = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 4, dtype=torch.float64)
    want = crop_resize_flip(x, whole, torch.zeros(4, dtype=torch.bool), 12)
    assert torch.equal(SimCLRAugment(AugmentConfig(ops=[]), 12, 3)(x, _gen()), want)


@pytest.mark.parametrize("size", [16, 12])
def test_rotate_alone_is_an_exact_rot90_of_the_resized_image(size: int) -> None:
    x = _images(12, 3, 16)
    aug = SimCLRAugment(AugmentConfig(ops=["rotate"]), size, 3)
    params = aug.sample(12, 16, 16, _gen(3))
    assert set(params.turns.tolist()) == {0, 1, 2, 3}  # the images get different turns
    y = aug.apply(x, params)
    resized = SimCLRAugment(AugmentConfig(ops=[]), size, 3)(x).numpy()
    for i in range(12):
        want = np.rot90(resized[i], int(params.turns[i]), axes=(-2, -1))
        assert np.array_equal(y[i].numpy(), want)


def test_rotate_angles_choose_the_turns() -> None:
    aug = SimCLRAugment(AugmentConfig(ops=["rotate"], rotate_angles=[90, 270]), 8, 1)
    turns = aug.sample(2000, 8, 8, _gen()).turns
    assert set(turns.tolist()) == {1, 3} and abs(turns.eq(1).float().mean().item() - 0.5) < 0.05


def test_sobel_alone_filters_the_chosen_images_only() -> None:
    x = _images(16, 3, 10)
    aug = SimCLRAugment(AugmentConfig(ops=["sobel"], sobel_p=0.5), 10, 3)
    params = aug.sample(16, 10, 10, _gen(1))
    on = params.sobel
    assert 0 < on.sum() < 16
    y = aug.apply(x, params)
    assert torch.equal(y[on], sobel(x[on])) and torch.equal(y[~on], x[~on])


def test_noise_alone_uses_per_image_sigmas() -> None:
    x = torch.full((8, 1, 48, 48), 0.5)
    cfg = AugmentConfig(ops=["noise"], noise_sigma=(0.01, 0.15))
    aug = SimCLRAugment(cfg, 48, 1)
    params = aug.sample(8, 48, 48, _gen(2))
    assert params.noise.all() and params.noise_sigma.unique().numel() == 8
    assert params.noise_field.shape == (8, 1, 48, 48)
    y = aug.apply(x, params)
    assert y.min() >= 0 and y.max() <= 1
    torch.testing.assert_close((y - 0.5).flatten(1).std(dim=1), params.noise_sigma, rtol=0.05, atol=0)
    assert torch.equal(y, add_gaussian_noise(x, params.noise_field, params.noise_sigma))


def test_cutout_alone_zeroes_one_square_per_image_after_the_resize() -> None:
    x = _images(10, 3, 24) * 0.9 + 0.1
    aug = SimCLRAugment(AugmentConfig(ops=["cutout"], cutout_size=(0.2, 0.5)), 20, 3)
    params = aug.sample(10, 24, 24, _gen(4))
    side = params.squares[:, 2]
    assert side.unique().numel() > 2 and (side >= 4).all() and (side <= 10).all()
    y = aug.apply(x, params)
    resized = SimCLRAugment(AugmentConfig(ops=[]), 20, 3)(x)
    assert torch.equal(y, cutout(resized, params.squares))
    assert torch.equal((y == 0).all(dim=1).flatten(1).sum(dim=1), side**2)


@pytest.mark.parametrize("op", ["rotate", "sobel", "noise", "cutout"])
def test_a_study_op_draws_nothing_for_the_others(op: str) -> None:
    params = SimCLRAugment(AugmentConfig(ops=[op]), 8, 3).sample(4, 8, 8, _gen())
    fields = {name: getattr(params, name) for name in params.__dataclass_fields__}
    present = {name for name, value in fields.items() if value is not None}
    expected = {"rotate": {"turns"}, "sobel": {"sobel"},
                "noise": {"noise", "noise_sigma", "noise_field"}, "cutout": {"cutout", "squares"}}
    assert present == expected[op]


def test_study_ops_leave_the_default_ops_draws_alone() -> None:
    """Study draws come after the default ones: adding an op keeps the crops, flips, colour
    and blur parameters of the same seed."""
    base = SimCLRAugment(AugmentConfig(), 40, 3).sample(16, 44, 44, _gen(9))
    more = SimCLRAugment(AugmentConfig(ops=list(AUGMENT_OPS)), 40, 3).sample(16, 44, 44, _gen(9))
    for name in ("boxes", "flip", "jitter", "factors", "order", "greyscale", "blur", "sigma"):
        assert torch.equal(getattr(base, name), getattr(more, name)), name


@pytest.mark.parametrize("channels", [1, 3])
def test_every_op_together(channels: int) -> None:
    x = _images(8, channels, 36) * 0.9 + 0.1
    cfg = AugmentConfig(ops=list(reversed(AUGMENT_OPS)), blur=True)
    aug = SimCLRAugment(cfg, 32, channels)
    params = aug.sample(8, 36, 36, _gen(5))
    y = aug.apply(x, params)
    assert y.shape == (8, channels, 32, 32) and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1 and torch.isfinite(y).all()
    # cutout applies last: its square is exactly 0 whatever came before
    for i in range(8):
        t, u, s = params.squares[i].tolist()
        assert (y[i, :, t:t + s, u:u + s] == 0).all()
    assert torch.equal(aug(x, _gen(5)), y)


# ----------------------------------------------------------------------------- the config
def test_ops_apply_in_the_fixed_order_whatever_the_listed_order() -> None:
    cfg = AugmentConfig(ops=["cutout", "color", "crop"])
    assert cfg.ops == ["crop", "color", "cutout"]
    x = _images(6, 3, 20)
    a = SimCLRAugment(cfg, 16, 3)(x, _gen())
    b = SimCLRAugment(AugmentConfig(ops=["crop", "color", "cutout"]), 16, 3)(x, _gen())
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("augment", "message"),
    [
        ({"ops": ["crop", "zoom"]}, r"augment\.ops: unknown op\(s\) \['zoom'\]; known: crop, flip"),
        ({"ops": ["crop", "noise", "crop"]}, r"augment\.ops: op\(s\) \['crop'\] listed more than once"),
        ({"rotate_angles": [90, 90]}, r"augment\.rotate_angles: \[90, 90\] repeats an angle"),
        ({"rotate_angles": []}, r"augment\.rotate_angles: needs at least one angle"),
        ({"rotate_angles": [45]}, r"augment\.rotate_angles\.0"),
        ({"cutout_size": [0.5, 1.2]}, r"cutout_size upper bound must be <= 1"),
        ({"cutout_size": [0.0, 0.5]}, r"cutout_size must satisfy 0 < low <= high"),
        ({"noise_sigma": [0.2, 0.1]}, r"noise_sigma must satisfy 0 <= low <= high"),
        ({"sobel_p": 1.5}, r"augment\.sobel_p"),
    ],
)
def test_bad_study_settings_name_the_key(augment: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"augment": augment})


def test_study_settings_round_trip_and_change_the_digest() -> None:
    """The study's keys are part of the config (MLflow params, run names, the encoder's
    config digest); listing today's ops in any order is the default config."""
    study = AugmentConfig(ops=["crop", "noise"], noise_sigma=(0.1, 0.1))
    dumped = study.model_dump(mode="json")
    assert dumped["ops"] == ["crop", "noise"] and dumped["noise_sigma"] == [0.1, 0.1]
    assert AugmentConfig.model_validate(dumped) == study
    default = config_from_dict({})
    assert config_from_dict({"augment": {"ops": ["crop", "noise"]}}).digest() != default.digest()
    assert config_from_dict({"augment": {"ops": ["blur", "crop", "color", "flip"]}}).digest() == \
        default.digest()
