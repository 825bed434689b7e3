"""Evaluation plots as PNG files (matplotlib, Agg backend; no display needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def new_figure(width: float = 6.0, height: float = 5.0) -> tuple[Any, Any]:
    """``(figure, axes)`` on the Agg backend (the one matplotlib set-up of the project)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG atomically (temporary sibling + rename) and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (true class rows, predicted columns)."""
    fig, ax = new_figure(7, 6)
    totals = matrix.sum(axis=1, keepdims=True)
    norm = matrix / np.maximum(totals, 1)
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def plot_per_class(series: Mapping[str, np.ndarray], classes: Sequence[str], path: Path,
                   title: str) -> Path:
    """Grouped bars: per-class accuracy of each named model (e.g. SimCLR vs a baseline)."""
    fig, ax = new_figure(max(6, 0.7 * len(classes)), 4)
    width = 0.8 / max(len(series), 1)
    positions = np.arange(len(classes))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(positions + i * width - 0.4 + width / 2, values, width, label=name)
    ax.set_xticks(positions, classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_curves(histories: Mapping[str, list[dict[str, Any]]], path: Path, title: str) -> Path:
    """Per-epoch train loss (left) and validation top-1 (right) of each run."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in histories.items():
        epochs = [row["epoch"] for row in rows]
        left.plot(epochs, [row["train_loss"] for row in rows], marker=".", label=name)
        right.plot(epochs, [row["val_top1"] for row in rows], marker=".", label=name)
    left.set(xlabel="epoch", ylabel="train loss", title=f"{title}: train loss")
    right.set(xlabel="epoch", ylabel="validation top-1 (sample; last: all)",
              title=f"{title}: validation top-1")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    return save_figure(fig, path)


def embed_2d(features: np.ndarray, method: str, seed: int) -> np.ndarray:
    """(N, D) -> (N, 2) by PCA or t-SNE (t-SNE on the first 50 principal components)."""
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    from sklearn.manifold import TSNE

    reduced = PCA(n_components=min(50, x.shape[1], len(x)), random_state=seed).fit_transform(x)
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(reduced)


def plot_embedding(features: np.ndarray, labels: np.ndarray, classes: Sequence[str], path: Path,
                   method: str = "tsne", points: int = 2000, seed: int = 0,
                   title: str = "test images") -> Path:
    """2-D map of a seeded subsample of ``features`` (N, D), coloured by class."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(features), size=min(points, len(features)), replace=False))
    coords = embed_2d(features[chosen], method, seed)
    fig, ax = new_figure(7, 6)
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for cls, name in enumerate(classes):
        mask = labels[chosen] == cls
        ax.scatter(coords[mask, 0], coords[mask, 1], s=4, color=cmap(cls % cmap.N), label=name)
    ax.set_title(f"{method.upper()} of h: {title} ({len(chosen)} points)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=3, fontsize=7, loc="best")
    return save_figure(fig, path)
