"""Pictures of a representation: confusion matrix, retrieval grid, scatter plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.evaluate.pictures import (
    confusion_matrix,
    confusion_plot,
    nearest_neighbours,
    retrieval_grid,
    scatter_plot,
)


def test_confusion_matrix_counts_rows_true_columns_predicted():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 0, 2])
    assert confusion_matrix(preds, labels, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_nearest_neighbours_and_retrieval_grid_frames(tmp_path):
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    queries = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    assert nearest_neighbours(queries, bank, 2).tolist() == [[0, 2], [1, 2]]
    images = torch.stack([torch.full((3, 4, 4), v, dtype=torch.uint8) for v in (10, 20, 30)])
    path = retrieval_grid(images[:2], queries, images, bank, tmp_path / "r.png", k=2,
                          query_labels=torch.tensor([0, 1]), bank_labels=torch.tensor([0, 1, 0]),
                          scale=1)  # fmt: skip
    grid = np.asarray(Image.open(path))
    cell = 4 + 2 * 2
    assert grid.shape == (2 * cell, 4 * cell, 3)
    # row 0: neighbour 1 is bank 0 (same class, green frame), neighbour 2 bank 2 (same: green)
    assert tuple(grid[0, 2 * cell]) == (0, 170, 0)
    # row 1: neighbour 1 is bank 1 (same class), neighbour 2 is bank 2 (class 0: red frame)
    assert tuple(grid[cell, 3 * cell]) == (210, 0, 0)
    assert tuple(grid[cell + 2, 2 * cell + 2]) == (20, 20, 20)  # the image inside the frame


def test_scatter_and_confusion_plots_are_written(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    feats = torch.randn(60, 8, generator=g) + 4 * torch.nn.functional.one_hot(labels, 8)
    path = scatter_plot(feats, labels, tmp_path / "t.png", class_names=["a", "b", "c"])
    assert Image.open(path).size[0] > 100
    cm = confusion_matrix(labels, labels, 3)
    assert Image.open(confusion_plot(cm, tmp_path / "c.png")).size[0] > 50
    with pytest.raises(ValueError, match="tsne or umap"):
        scatter_plot(feats, labels, tmp_path / "x.png", method="pca")
