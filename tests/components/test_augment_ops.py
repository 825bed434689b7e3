"""The augmentation study's ops (paper, Figure 5) against NumPy / SciPy references, and the
``AugmentConfig.ops`` switch that composes a view from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from components.augment import (
    add_gaussian_noise,
    cutout,
    rotate_quarter_turns,
    sample_cutouts,
    sobel,
)

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
