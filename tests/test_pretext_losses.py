"""Every Part 2 loss equals a naive loop over images, pixels and classes, written straight from the paper's equation."""
import math

import pytest
import torch

from sslcourse.methods.pretext.color import colorization_loss
from sslcourse.methods.pretext.autoencoder import reconstruction_loss
from sslcourse.methods.pretext.context_encoder import inpainting_loss
from sslcourse.methods.pretext.counting import counting_loss
from sslcourse.methods.pretext.exemplar import exemplar_loss
from sslcourse.methods.pretext.jigsaw import jigsaw_loss
from sslcourse.methods.pretext.relpos import relpos_loss
from sslcourse.methods.pretext.rotnet import rotation_loss
from sslcourse.methods.pretext.selfie import selfie_loss

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


@pytest.fixture(autouse=True)
def seeded(): torch.manual_seed(0)


def randn(*shape): return torch.randn(*shape, dtype=torch.float64)
def rand(*shape): return torch.rand(*shape, dtype=torch.float64)


def log_softmax_loop(scores):
    "log softmax of a list of numbers, one at a time."
    total = sum(math.exp(s) for s in scores)
    return [s - math.log(total) for s in scores]


@pytest.mark.parametrize('loss, classes', [(rotation_loss, 4), (relpos_loss, 8), (jigsaw_loss, 100),
                                           (exemplar_loss, 50)])
def test_classification_pretexts_are_the_mean_negative_log_likelihood(loss, classes):
    logits, labels = randn(12, classes), torch.randint(classes, (12,))
    expected = -sum(log_softmax_loop(logits[n].tolist())[labels[n]] for n in range(12)) / 12
    assert loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_reconstruction_loss_is_the_mean_squared_error_over_pixels():
    reconstruction, target = randn(3, 2, 5, 5), randn(3, 2, 5, 5)
    pixels = [(reconstruction[n, c, y, x] - target[n, c, y, x]).item() ** 2
              for n in range(3) for c in range(2) for y in range(5) for x in range(5)]
    assert reconstruction_loss(reconstruction, target).item() == pytest.approx(sum(pixels) / len(pixels), rel=1e-6)


def test_colorization_loss_is_the_rebalanced_soft_cross_entropy_per_pixel():
    n, q, h, w = 2, 7, 3, 4
    logits = randn(n, q, h, w)
    target = torch.softmax(3 * randn(n, q, h, w), 1)              # soft encodings Z_hw, summing to 1
    weights = rand(q) + 0.5
    plain = weighted = 0.0
    for i in range(n):
        for y in range(h):
            for x in range(w):
                log_p = log_softmax_loop(logits[i, :, y, x].tolist())
                z = target[i, :, y, x].tolist()
                cross_entropy = -sum(z[k] * log_p[k] for k in range(q))
                plain += cross_entropy
                weighted += weights[max(range(q), key=lambda k: z[k])].item() * cross_entropy  # v(Z_hw) = w[argmax Z]
    pixels = n * h * w
    assert colorization_loss(logits, target).item() == pytest.approx(plain / pixels, rel=1e-6)
    assert colorization_loss(logits, target, weights).item() == pytest.approx(weighted / pixels, rel=1e-6)


def test_inpainting_loss_is_the_weighted_mean_of_the_squared_error():
    reconstruction, target = randn(2, 3, 6, 6), randn(2, 3, 6, 6)
    weights = torch.zeros(2, 1, 6, 6, dtype=torch.float64); weights[:, :, 1:5, 1:5] = 10; weights[:, :, 2:4, 2:4] = 1  # band and hole
    numerator = denominator = 0.0
    for i in range(2):
        for y in range(6):
            for x in range(6):
                error = sum((reconstruction[i, c, y, x] - target[i, c, y, x]).item() ** 2 for c in range(3)) / 3
                numerator += weights[i, 0, y, x].item() * error
                denominator += weights[i, 0, y, x].item()
    assert inpainting_loss(reconstruction, target, weights).item() == pytest.approx(numerator / denominator, rel=1e-6)


@pytest.mark.parametrize('contrastive', [True, False])
def test_counting_loss_matches_the_paper_term_by_term(contrastive):
    whole, tiles, other = rand(5, 6), rand(5, 4, 6) / 2, rand(5, 6)
    total = 0.0
    for i in range(5):
        counts = [sum(tiles[i, j, k].item() for j in range(4)) for k in range(6)]          # Σ_j φ(T_j∘x)
        term = sum((whole[i, k].item() - counts[k]) ** 2 for k in range(6))
        if contrastive: term += max(0.0, 10.0 - sum((other[i, k].item() - counts[k]) ** 2 for k in range(6)))
        total += term
    loss = counting_loss(whole, tiles, other if contrastive else None, margin=10.0)
    assert loss.item() == pytest.approx(total / 5, rel=1e-6)


def test_selfie_loss_is_the_cross_entropy_over_scaled_dot_products():
    n, m, d = 3, 4, 8
    queries, candidates = randn(n, m, d), randn(n, m, d)
    labels = torch.stack([torch.randperm(m) for _ in range(n)])
    total = 0.0
    for i in range(n):
        for k in range(m):
            scores = [sum(queries[i, k, c].item() * candidates[i, j, c].item() for c in range(d)) / math.sqrt(d)
                      for j in range(m)]
            total -= log_softmax_loop(scores)[labels[i, k]]
    assert selfie_loss(queries, candidates, labels).item() == pytest.approx(total / (n * m), rel=1e-6)
