"""Batched SimCLR view generation on tensors, on the CPU or the GPU (x's device).

One call makes one view of every image, each with its own random parameters (call twice for
the two views). The pipeline follows the paper's appendix A:

1. random resized crop (area fraction ``crop_scale``, aspect ``crop_ratio``) + horizontal flip,
   done as ONE bilinear resampling per image (``affine_grid`` + ``grid_sample``);
2. colour distortion of strength s, with probability ``jitter_p``: brightness 0.8s,
   contrast 0.8s, saturation 0.8s, hue 0.2s in a random order per image; then greyscale with
   probability ``grayscale_p``. Grey (1-channel) images get brightness and contrast only;
3. Gaussian blur with probability ``blur_p``, sigma in ``blur_sigma``, kernel about 10% of the
   side ("auto": off for images of 32 px and less).

That is the default view. For the paper's augmentation study (Figure 5), ``AugmentConfig.ops``
composes a view of any of crop, flip, rotate (quarter turns), color (jitter + greyscale),
Sobel, blur, Gaussian noise and cutout, always applied in that order (``AUGMENT_OPS``); without
crop the image is only resized to ``image_size``. An op left out draws no random numbers, so
the default view is bit for bit the one above.

Random parameters are drawn on the CPU from ``generator`` (or torch's global RNG), so a seed
gives the same views on any device; the study's noise too (B x C x S x S normals per view).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from components.config import AugmentConfig

BLUR_OFF_MAX_SIZE = 32
CROP_TRIES = 10
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)
_GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision on tensors


def to_float_tensor(images: np.ndarray | Tensor) -> Tensor:
    """uint8 (B, H, W, C) -> float32 (B, C, H, W) in [0, 1] (contiguous)."""
    if isinstance(images, np.ndarray):
        # memory-mapped shards are read-only; torch wants a writable buffer (the copy is uint8)
        writable = images.flags.writeable and images.flags.c_contiguous
        x = torch.from_numpy(images if writable else np.array(images, order="C"))
    else:
        x = images
    if x.dim() != 4:
        raise ValueError(f"expected (B, H, W, C) images, got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {x.dtype}")
    return x.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64) * (high - low) + low


def _bernoulli(n: int, p: float, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator) < p


# ----------------------------------------------------------------------------- crop + flip
def sample_crops(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random resized crop boxes, torchvision's rule vectorised: (n, 4) float64 ``x0, y0, w, h``.

    Up to 10 tries per image of (area fraction ~ U(scale), log aspect ~ U(log ratio)); the
    first that fits is used, else the whole image cropped to the nearest allowed aspect.
    Sizes are continuous (sub-pixel), as the crop is resampled bilinearly anyway.
    """
    area = height * width
    frac = _uniform(n * CROP_TRIES, *scale, generator).view(n, CROP_TRIES)
    log_r = _uniform(n * CROP_TRIES, math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = log_r.view(n, CROP_TRIES).exp()
    w = (frac * area * aspect).sqrt()
    h = (frac * area / aspect).sqrt()
    fits = (w <= width) & (h <= height)
    first = fits.float().argmax(dim=1)  # index of the first fitting try (0 if none fits)
    w = w.gather(1, first[:, None]).squeeze(1)
    h = h.gather(1, first[:, None]).squeeze(1)
    # fallback: the whole image at the nearest allowed aspect ratio (torchvision's centre crop)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = height * ratio[1], float(height)
    else:
        fw, fh = float(width), float(height)
    none = ~fits.any(dim=1)
    w = torch.where(none, torch.full_like(w, fw), w)
    h = torch.where(none, torch.full_like(h, fh), h)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    x0 = torch.where(none, (width - w) / 2, u[:, 0] * (width - w))
    y0 = torch.where(none, (height - h) / 2, u[:, 1] * (height - h))
    return torch.stack([x0, y0, w, h], dim=1)


def crop_resize_flip(x: Tensor, boxes: Tensor, flips: Tensor, size: int) -> Tensor:
    """Resample each box of x (B, C, H, W) to (size, size), mirrored where ``flips``; bilinear."""
    b, _, height, width = x.shape
    boxes = boxes.to(device=x.device, dtype=torch.float32)
    x0, y0, w, h = boxes.unbind(1)
    # affine_grid maps output coords in [-1, 1] to input coords in [-1, 1] (align_corners=False)
    sign = 1.0 - 2.0 * flips.to(device=x.device, dtype=torch.float32)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0] = sign * w / width
    theta[:, 0, 2] = (2 * x0 + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * y0 + h) / height - 1
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ----------------------------------------------------------------------------- colour
def grey(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 1, H, W) luma (identity for C=1)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_GREY_WEIGHTS[0] * r + _GREY_WEIGHTS[1] * g + _GREY_WEIGHTS[2] * b).unsqueeze(1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    f = factor.view(-1, 1, 1, 1)
    mean = grey(x).mean(dim=(1, 2, 3), keepdim=True)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * grey(x)).clamp_(0, 1)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of RGB x (B, 3, H, W) by ``shift`` (B,) turns, through HSV."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    v = maxc
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    h = torch.remainder(h + shift.view(-1, 1, 1), 1.0)
    # HSV -> RGB: channel k = v - v s clamp(min(p, 4 - p), 0, 1), p = (k_offset + 6h) mod 6
    out = []
    for offset in (5.0, 3.0, 1.0):
        p = torch.remainder(offset + 6.0 * h, 6.0)
        out.append(v - v * s * torch.clamp(torch.minimum(p, 4.0 - p), 0.0, 1.0))
    return torch.stack(out, dim=1).clamp_(0, 1)


_OPS = {
    BRIGHTNESS: adjust_brightness,
    CONTRAST: adjust_contrast,
    SATURATION: adjust_saturation,
    HUE: adjust_hue,
}


# ----------------------------------------------------------------------------- blur
def blur_kernel_size(image_size: int) -> int:
    """Odd kernel of about 10% of the side, at least 3."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur, one sigma per image: x (B, C, H, W), sigma (B,); reflect padding."""
    b, c, height, width = x.shape
    half = kernel_size // 2
    pos = torch.arange(-half, half + 1, device=x.device, dtype=torch.float32)
    kern = torch.exp(-(pos[None] ** 2) / (2 * sigma.to(x.device, torch.float32)[:, None] ** 2))
    kern = (kern / kern.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, k)
    y = x.reshape(1, b * c, height, width)
    mode = "reflect" if min(height, width) > half else "replicate"
    y = F.conv2d(F.pad(y, (half, half, 0, 0), mode=mode), kern[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, half, half), mode=mode), kern[:, None, :, None], groups=b * c)
    return y.reshape(b, c, height, width)


# ----------------------------------------------------------------------------- study ops
# The other ops of the paper's augmentation study (Figure 5); see AugmentConfig.ops.
def rotate_quarter_turns(x: Tensor, turns: Tensor) -> Tensor:
    """x (B, C, S, S) rotated by ``turns`` (B,) int quarter turns (0-3) anticlockwise, per image.

    As ``numpy.rot90(image, k, axes=(-2, -1))``; one ``torch.rot90`` per group of equal turns.
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(x.shape[-2:])}")
    turns = turns.to(torch.int64) % 4
    out = x.clone()
    for k in (1, 2, 3):
        idx = (turns == k).nonzero().squeeze(1).to(x.device)
        if idx.numel():
            out[idx] = torch.rot90(x[idx], k, dims=(2, 3))
    return out


_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def sobel(x: Tensor) -> Tensor:
    """Sobel gradient magnitude of x (B, C, H, W)'s luma, scaled into [0, 1] by each image's
    maximum (a flat image gives zeros); edge pixels replicated; returns (B, C, H, W), the
    magnitude copied to every channel."""
    kx = torch.tensor(_SOBEL_X, device=x.device, dtype=torch.float32)
    kern = torch.stack([kx, kx.t()])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    g = F.conv2d(F.pad(grey(x.float()), (1, 1, 1, 1), mode="replicate"), kern)
    mag = g.pow(2).sum(dim=1, keepdim=True).sqrt()  # (B, 1, H, W)
    peak = mag.amax(dim=(1, 2, 3), keepdim=True)
    mag = mag / torch.where(peak > 0, peak, torch.ones_like(peak))
    return mag.expand(-1, x.shape[1], -1, -1).clone()


def add_gaussian_noise(x: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """x (B, C, H, W) + sigma (B,) x noise (B, C, H, W) standard normal, clamped into [0, 1]."""
    scale = sigma.to(x.device, torch.float32).view(-1, 1, 1, 1)
    return (x + scale * noise.to(x.device, torch.float32)).clamp_(0, 1)


def sample_cutouts(
    n: int, height: int, width: int, size: tuple[float, float],
    generator: torch.Generator | None = None,
) -> Tensor:
    """(n, 3) int64 ``top, left, side`` of one square per image, inside the image: side ~
    U(size) x the short side (rounded, at least 1 px), position uniform over the placements."""
    short = min(height, width)
    side = (_uniform(n, *size, generator) * short).round().clamp_(1, short).long()
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = (u[:, 0] * (height - side + 1)).floor().long().clamp_(max=height - side)
    left = (u[:, 1] * (width - side + 1)).floor().long().clamp_(max=width - side)
    return torch.stack([top, left, side], dim=1)


def cutout(x: Tensor, squares: Tensor, fill: float = 0.0) -> Tensor:
    """x (B, C, H, W) with each image's square ``squares`` (B, 3) ``top, left, side`` set to
    ``fill`` in every channel. The paper's figure shows a black patch, so the view uses 0."""
    _, _, height, width = x.shape
    top, left, side = squares.to(x.device).unbind(1)
    rows = torch.arange(height, device=x.device)[None]
    cols = torch.arange(width, device=x.device)[None]
    in_rows = (rows >= top[:, None]) & (rows < (top + side)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + side)[:, None])  # (B, W)
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (B, 1, H, W)
    return x.masked_fill(mask, fill)


# ----------------------------------------------------------------------------- the view
@dataclass(frozen=True)
class ViewParams:
    """Per-image random parameters of one view of a batch of n images (all on the CPU).

    An op left out of ``AugmentConfig.ops`` draws nothing: its fields are None.
    """

    boxes: Tensor | None  # (n, 4) float64 crop x0, y0, w, h in input pixels ("crop")
    flip: Tensor | None  # (n,) bool ("flip")
    jitter: Tensor | None  # (n,) bool: colour jitter applied ("color", as the next three)
    factors: Tensor | None  # (n, 4) brightness, contrast, saturation factors and hue shift
    order: Tensor | None  # (n, 4) int64: a permutation of the 4 jitter ops
    greyscale: Tensor | None  # (n,) bool
    blur: Tensor | None  # (n,) bool ("blur")
    sigma: Tensor | None  # (n,) float32
    turns: Tensor | None = None  # (n,) int64 quarter turns anticlockwise ("rotate")
    sobel: Tensor | None = None  # (n,) bool ("sobel")
    noise: Tensor | None = None  # (n,) bool ("noise", as the next two)
    noise_sigma: Tensor | None = None  # (n,) float32
    noise_field: Tensor | None = None  # (n, C, S, S) float32 standard normal
    cutout: Tensor | None = None  # (n,) bool ("cutout")
    squares: Tensor | None = None  # (n, 3) int64 top, left, side in output pixels


def _chosen(mask: Tensor | None, device: torch.device) -> Tensor | None:
    """Indices (on ``device``) of the images an op applies to; None when there are none."""
    if mask is None or not mask.any():
        return None
    return mask.nonzero().squeeze(1).to(device)


class SimCLRAugment:
    """One SimCLR view per image: ``__call__(x (B, C, H, W) float [0,1], generator) -> (B, C, S, S)``.

    S is ``image_size``; runs on x's device; float32 output in [0, 1]. ``cfg.ops`` picks the
    ops (the default: crop, flip, color, blur); they apply in the order of ``AUGMENT_OPS``.
    Parameters are drawn for the default ops first, in their original order, then for the
    study ops, so the default view is unchanged by their existence.
    """

    def __init__(self, cfg: AugmentConfig, image_size: int, channels: int) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.cfg, self.image_size, self.channels = cfg, int(image_size), int(channels)
        self.view_ops = frozenset(cfg.ops)
        if cfg.blur == "auto":
            self.blur_on = self.image_size > BLUR_OFF_MAX_SIZE
        else:
            self.blur_on = cfg.blur in (True, "on")
        self.kernel_size = blur_kernel_size(self.image_size)
        s = cfg.color_strength
        # (low, high) of each op's factor; hue is a shift, the others multiply
        self.ranges = (
            (max(0.0, 1 - 0.8 * s), 1 + 0.8 * s),
            (max(0.0, 1 - 0.8 * s), 1 + 0.8 * s),
            (max(0.0, 1 - 0.8 * s), 1 + 0.8 * s),
            (-min(0.5, 0.2 * s), min(0.5, 0.2 * s)),
        )
        # jitter ops that change a grey image: brightness and contrast only
        self.jitter_ops = (
            (BRIGHTNESS, CONTRAST) if channels == 1 else (BRIGHTNESS, CONTRAST, SATURATION, HUE)
        )
        self.turn_choices = torch.tensor([angle // 90 for angle in cfg.rotate_angles])

    def sample(
        self, n: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> ViewParams:
        cfg, ops, g, size = self.cfg, self.view_ops, generator, self.image_size
        p: dict[str, Tensor] = {}
        if "crop" in ops:
            p["boxes"] = sample_crops(n, height, width, cfg.crop_scale, cfg.crop_ratio, g)
        if "flip" in ops:
            p["flip"] = _bernoulli(n, cfg.flip_p, g)
        if "color" in ops:
            p["jitter"] = _bernoulli(n, cfg.jitter_p, g) & (cfg.color_strength > 0)
            p["factors"] = torch.stack(
                [_uniform(n, low, high, g).float() for low, high in self.ranges], dim=1
            )
            p["order"] = torch.rand(n, 4, generator=g).argsort(dim=1)
            p["greyscale"] = _bernoulli(n, cfg.grayscale_p, g) & (self.channels == 3)
        if "blur" in ops:
            p["blur"] = _bernoulli(n, cfg.blur_p, g) & self.blur_on
            p["sigma"] = _uniform(n, *cfg.blur_sigma, g).float()
        # the study ops, after every draw of the default ones
        if "rotate" in ops:
            pick = torch.randint(len(self.turn_choices), (n,), generator=g)
            p["turns"] = self.turn_choices[pick]
        if "sobel" in ops:
            p["sobel"] = _bernoulli(n, cfg.sobel_p, g)
        if "noise" in ops:
            p["noise"] = _bernoulli(n, cfg.noise_p, g)
            p["noise_sigma"] = _uniform(n, *cfg.noise_sigma, g).float()
            p["noise_field"] = torch.randn(n, self.channels, size, size, generator=g)
        if "cutout" in ops:
            p["cutout"] = _bernoulli(n, cfg.cutout_p, g)
            p["squares"] = sample_cutouts(n, size, size, cfg.cutout_size, g)
        return ViewParams(**{name: p.get(name) for name in ViewParams.__dataclass_fields__})

    def resize(self, x: Tensor, params: ViewParams) -> Tensor:
        """x (B, C, H, W) cropped (or whole) and mirrored, as one bilinear resampling to
        (S, S); a copy of x when there is neither crop nor resize."""
        n, _, height, width = x.shape
        size = self.image_size
        if params.boxes is None and (height, width) == (size, size):
            x = x.float().clone()
            idx = _chosen(params.flip, x.device)
            if idx is not None:
                x[idx] = x[idx].flip(-1)
            return x
        boxes = params.boxes
        if boxes is None:
            boxes = torch.tensor([[0.0, 0.0, width, height]], dtype=torch.float64).expand(n, 4)
        flip = params.flip if params.flip is not None else torch.zeros(n, dtype=torch.bool)
        return crop_resize_flip(x.float(), boxes, flip, size)

    def apply(self, x: Tensor, params: ViewParams) -> Tensor:
        """The view of x (B, C, H, W) float [0, 1] for the given parameters."""
        x = self.resize(x, params)
        dev = x.device
        if params.turns is not None:
            x = rotate_quarter_turns(x, params.turns)
        if params.jitter is not None and params.jitter.any():
            factors = params.factors.to(dev)
            for position in range(4):
                for op in self.jitter_ops:
                    idx = _chosen(params.jitter & (params.order[:, position] == op), dev)
                    if idx is not None:
                        x[idx] = _OPS[op](x[idx], factors[idx, op])
        if (idx := _chosen(params.greyscale, dev)) is not None:
            x[idx] = grey(x[idx]).expand(-1, 3, -1, -1)
        if (idx := _chosen(params.sobel, dev)) is not None:
            x[idx] = sobel(x[idx])
        if (idx := _chosen(params.blur, dev)) is not None:
            x[idx] = gaussian_blur(x[idx], params.sigma[params.blur], self.kernel_size)
        if (idx := _chosen(params.noise, dev)) is not None:
            mask = params.noise
            x[idx] = add_gaussian_noise(x[idx], params.noise_field[mask], params.noise_sigma[mask])
        if (idx := _chosen(params.cutout, dev)) is not None:
            x[idx] = cutout(x[idx], params.squares[params.cutout])
        return x.clamp_(0, 1)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"expected (B, {self.channels}, H, W) images, got shape {tuple(x.shape)}"
            )
        return self.apply(x, self.sample(x.shape[0], x.shape[2], x.shape[3], generator))


class CropFlipAugment:
    """Light augmentation for fine-tuning: random resized crop (area ``scale``) + flip.

    ``__call__(x (B, C, H, W) float [0,1], generator) -> (B, C, S, S)`` on x's device.
    """

    def __init__(
        self,
        image_size: int,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
    ) -> None:
        self.image_size, self.scale, self.ratio, self.flip_p = int(image_size), scale, ratio, flip_p

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        n, _, height, width = x.shape
        boxes = sample_crops(n, height, width, self.scale, self.ratio, generator)
        flips = _bernoulli(n, self.flip_p, generator)
        return crop_resize_flip(x.float(), boxes, flips, self.image_size).clamp_(0, 1)


def simple_augment(
    x: Tensor, generator: torch.Generator | None = None, image_size: int | None = None
) -> Tensor:
    """Crop + flip of x (B, C, H, W) at ``image_size`` (default: x's side); see CropFlipAugment."""
    return CropFlipAugment(image_size or x.shape[-1])(x, generator)


def save_view_grid(
    images: np.ndarray | Tensor,
    augment: SimCLRAugment,
    path: str | Path,
    max_images: int = 8,
    seed: int = 0,
    upscale: int = 4,
) -> Path:
    """PNG of up to ``max_images`` images: row 1 the originals, rows 2-3 two views of each.

    ``images``: uint8 (B, H, W, C) or float (B, C, H, W) in [0, 1]. Small images are enlarged
    ``upscale`` times (nearest) so that a person can see them.
    """
    from torchvision.utils import make_grid, save_image

    x = images
    if isinstance(x, np.ndarray) or x.dtype == torch.uint8:
        x = to_float_tensor(x)
    x = x[:max_images].float().cpu()
    gen = torch.Generator().manual_seed(seed)
    size = augment.image_size
    orig = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    rows = torch.cat([orig, augment(x, gen), augment(x, gen)]).clamp(0, 1)
    if upscale > 1:
        rows = F.interpolate(rows, scale_factor=upscale, mode="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(rows, nrow=x.shape[0], padding=2, pad_value=1.0), path)
    return path
