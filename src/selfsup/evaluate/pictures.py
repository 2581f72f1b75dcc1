"""Pictures of a representation: t-SNE / UMAP scatter plots coloured by class, a
nearest-neighbour retrieval grid, and a confusion matrix.

The scatter plots and the confusion matrix need matplotlib (``pip install "selfsup[plots]"``),
t-SNE needs scikit-learn (``selfsup[sklearn]``) and UMAP umap-learn (``selfsup[umap]``); the
retrieval grid needs only torch and Pillow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def _save(fig: Any, path: str | Path) -> Path:
    """Write a matplotlib figure to ``path`` (its folder made) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _need(module: str, extra: str):  # type: ignore[no-untyped-def]
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f'this picture needs {module.split(".")[0]}: pip install "selfsup[{extra}]"'
        ) from err


def embed_2d(features: Tensor, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """2-D embedding (N, 2) of L2-normalised features (N, D) with ``tsne`` or ``umap``."""
    x = F.normalize(features.float(), dim=1).numpy()
    if method == "tsne":
        manifold = _need("sklearn.manifold", "sklearn")
        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        tsne = manifold.TSNE(n_components=2, init="pca", random_state=seed,
                             perplexity=perplexity)  # fmt: skip
        return tsne.fit_transform(x)
    if method == "umap":
        umap = _need("umap", "umap")
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    raise ValueError(f"unknown embedding {method!r}; choose tsne or umap")


def scatter_plot(
    features: Tensor,
    labels: Tensor,
    path: str | Path,
    *,
    method: str = "tsne",
    class_names: list[str] | None = None,
    max_points: int = 2000,
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """Save a t-SNE / UMAP scatter plot of (at most ``max_points``, a seeded subset) features
    coloured by class to ``path`` (PNG); returns the path."""
    plt = _need("matplotlib.pyplot", "plots")
    n = len(features)
    idx = np.sort(np.random.default_rng(seed).permutation(n)[: min(max_points, n)])
    xy = embed_2d(features[idx], method, seed)
    y = labels[idx].numpy()
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    cmap = plt.get_cmap("tab10" if y.max() < 10 else "tab20")
    for c in np.unique(y):
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        ax.scatter(*xy[y == c].T, s=4, color=cmap(int(c) % cmap.N), label=name)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title or f"{method.upper()} of {len(idx)} test features")
    ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False)
    return _save(fig, path)


def nearest_neighbours(queries: Tensor, bank: Tensor, k: int) -> Tensor:
    """Indices (Q, k) of each query's k most cosine-similar bank rows (Q, D) x (M, D)."""
    sim = F.normalize(queries.float(), dim=1) @ F.normalize(bank.float(), dim=1).T
    return sim.topk(min(k, len(bank)), dim=1).indices


def retrieval_grid(
    query_images: Tensor,
    query_features: Tensor,
    bank_images: Tensor,
    bank_features: Tensor,
    path: str | Path,
    *,
    k: int = 8,
    query_labels: Tensor | None = None,
    bank_labels: Tensor | None = None,
    scale: int = 2,
) -> Path:
    """Save a grid (PNG): one row per query — the query, a gap, then its ``k`` nearest bank
    images (cosine on features). With labels, each neighbour gets a green (same class) or red
    frame. Images are uint8 (N, C, H, W), C in {1, 3}."""
    from PIL import Image

    nn_idx = nearest_neighbours(query_features, bank_features, k)
    q, c, h, w = query_images.shape
    pad = 2
    cell_h, cell_w = h + 2 * pad, w + 2 * pad
    canvas = torch.full((3, q * cell_h, (k + 2) * cell_w), 255, dtype=torch.uint8)

    def put(img: Tensor, row: int, col: int, frame: tuple[int, int, int] | None) -> None:
        img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
        y0, x0 = row * cell_h, col * cell_w
        if frame is not None:
            canvas[:, y0 : y0 + cell_h, x0 : x0 + cell_w] = torch.tensor(frame).view(3, 1, 1)
        canvas[:, y0 + pad : y0 + pad + h, x0 + pad : x0 + pad + w] = img

    for i in range(q):
        put(query_images[i], i, 0, (0, 0, 0))
        for j, b in enumerate(nn_idx[i].tolist()):
            frame = None
            if query_labels is not None and bank_labels is not None:
                same = int(bank_labels[b]) == int(query_labels[i])
                frame = (0, 170, 0) if same else (210, 0, 0)
            put(bank_images[b], i, j + 2, frame)
    picture = Image.fromarray(canvas.permute(1, 2, 0).numpy())
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(num_classes, num_classes) int64 counts: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def confusion_plot(
    matrix: Tensor, path: str | Path, *, class_names: list[str] | None = None
) -> Path:
    """Save a row-normalised confusion matrix heat map (PNG) with the counts written in."""
    plt = _need("matplotlib.pyplot", "plots")
    m = matrix.double()
    rates = (m / m.sum(1, keepdim=True).clamp_min(1)).numpy()
    n = len(m)
    names = class_names or [str(i) for i in range(n)]
    fig, ax = plt.subplots(figsize=(1 + 0.5 * n, 1 + 0.5 * n), dpi=100)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
    return _save(fig, path)
