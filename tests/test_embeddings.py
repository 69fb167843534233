"""Lesson 51's retrieval and maps: neighbours and precision equal brute-force loops, thumbnails spread one per cell,
frames say whether a neighbour shares the query's class, and `project` refuses unknown projections in one line."""
import matplotlib
import numpy as np
import pytest
import torch
from sslcourse.core import UsageError
from sslcourse.experiments.embeddings import nearest_neighbours, plot_retrieval, precision_at_k, spread_points
from sslcourse.viz import project

pytestmark = pytest.mark.usefixtures('one_thread')


def test_nearest_neighbours_equal_a_loop_over_cosine_similarities():
    generator = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn(7, 5, generator=generator), torch.randn(40, 5, generator=generator)
    found = nearest_neighbours(queries, gallery, k=4, chunk=3)  # chunks smaller than the queries
    for q, row in zip(queries, found.tolist()):
        similarity = [float(q @ g / (q.norm() * g.norm())) for g in gallery]
        assert row == sorted(range(len(gallery)), key=lambda i: -similarity[i])[:4]


def test_neighbours_ignore_length_and_k_is_checked():
    gallery = torch.randn(10, 3)
    assert nearest_neighbours(gallery * 5, gallery, k=1).flatten().tolist() == list(range(10))
    for k in (0, 11):
        with pytest.raises(UsageError, match='k must be between 1 and the gallery size 10') as error:
            nearest_neighbours(gallery, gallery, k=k)
        assert '\n' not in str(error.value)


def test_precision_at_k_equals_a_loop():
    generator = torch.Generator().manual_seed(1)
    neighbours = torch.randint(0, 30, (12, 5), generator=generator)
    gallery_labels, query_labels = torch.randint(0, 3, (30,), generator=generator), torch.randint(0, 3, (12,), generator=generator)
    loop = np.mean([[gallery_labels[j] == query_labels[i] for j in row] for i, row in enumerate(neighbours.tolist())])
    assert precision_at_k(neighbours, gallery_labels, query_labels) == pytest.approx(float(loop))


def test_spread_points_takes_one_point_per_occupied_cell():
    points = np.random.default_rng(0).normal(size=(500, 2))
    chosen = spread_points(points, grid=5)
    low, high = points.min(0), points.max(0)
    cells = [tuple(np.minimum(((points[i] - low) / (high - low + 1e-12) * 5).astype(int), 4)) for i in chosen]
    occupied = {tuple(c) for c in np.minimum(((points - low) / (high - low + 1e-12) * 5).astype(int), 4)}
    assert len(set(cells)) == len(cells) == len(occupied) and len(set(chosen)) == len(chosen)


def test_retrieval_frames_mark_neighbours_of_another_class():
    images = torch.randint(0, 255, (6, 1, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    fig = plot_retrieval(images[:2], labels[:2], torch.tensor([[1, 2], [3, 4]]), images, labels, ['a', 'b'],
                         row_labels=['x', 'y'])
    axes = np.array(fig.axes).reshape(2, 3)
    colour = lambda ax: matplotlib.colors.to_hex(ax.spines['top'].get_edgecolor())
    assert colour(axes[0, 1]) == matplotlib.colors.to_hex('tab:green') and colour(axes[0, 2]) == matplotlib.colors.to_hex('tab:red')
    assert colour(axes[1, 1]) == matplotlib.colors.to_hex('tab:red') and colour(axes[1, 2]) == matplotlib.colors.to_hex('tab:green')
    assert axes[0, 2].get_xlabel() == 'b' and axes[1, 0].get_ylabel() == 'y'


def test_project_gives_two_columns_and_refuses_unknown_methods():
    features = torch.randn(60, 8, generator=torch.Generator().manual_seed(0))
    for method in ('tsne', 'pca'): assert project(features, method).shape == (60, 2)
    with pytest.raises(UsageError, match="unknown projection 'isomap'; choose from: tsne, umap, pca"):
        project(features, 'isomap')
