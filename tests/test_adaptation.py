"Domain adaptation (lesson 55): gradient reversal, the schedules, the DANN loss against a loop, target domains, OT."
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sslcourse.core import UsageError
from sslcourse.data import ImageData, Split
from sslcourse.experiments.adaptation import (SHIFTS, shift_images, grey_to_rgb, domain_pair, reverse_gradient, dann_weight,
                                  dann_learning_rate, DANN, dann_loss, train_dann, predict, fit_transport, ot_adapt)

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


class Flat(nn.Module):
    "A tiny feature extractor for vectors, with the `num_features` DANN reads."
    def __init__(self, inputs=6, num_features=5):
        super().__init__()
        self.layer, self.num_features = nn.Linear(inputs, num_features), num_features
    def forward(self, x): return torch.tanh(self.layer(x))


@pytest.mark.parametrize('weight', [0.0, 0.1, 1.0, 3.0])
def test_gradient_reversal_is_identity_forward_and_minus_weight_backward(weight):
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(7, 4, dtype=torch.float64)
    y = reverse_gradient(x, weight)
    assert torch.equal(y, x)
    (grad,) = torch.autograd.grad(y, x, upstream)
    assert torch.equal(grad, -weight * upstream)


def test_reversal_flips_the_domain_gradient_reaching_the_encoder():
    torch.manual_seed(0)
    model = DANN(Flat(), num_classes=3)
    x, domains = torch.randn(10, 6), torch.tensor([0.] * 5 + [1.] * 5)
    def encoder_grads(weight=None):
        model.zero_grad()
        features = model.encoder(x)
        logits = model.domain_classifier(features if weight is None else reverse_gradient(features, weight)).squeeze(1)
        F.binary_cross_entropy_with_logits(logits, domains).backward()
        return [p.grad.clone() for p in model.encoder.parameters()], [p.grad.clone() for p in model.domain_classifier.parameters()]
    plain_encoder, plain_head = encoder_grads()
    for weight in (0.5, 2.0):
        reversed_encoder, reversed_head = encoder_grads(weight)
        for a, b in zip(reversed_encoder, plain_encoder): assert torch.allclose(a, -weight * b, atol=1e-7)
        for a, b in zip(reversed_head, plain_head): assert torch.allclose(a, b)  # the domain classifier is not reversed
    # and through the model's own forward: the label head's gradient does not depend on λ
    _, logits = model(x, 1.0)
    assert logits.shape == (10,)


def test_schedules():
    assert dann_weight(0.0) == 0.0
    for p in (0.1, 0.5, 1.0):
        assert math.isclose(dann_weight(p), 2 / (1 + math.exp(-10 * p)) - 1)
    values = [dann_weight(p / 100) for p in range(101)]
    assert all(a < b for a, b in zip(values, values[1:])) and values[-1] < 1
    assert math.isclose(dann_weight(0.2, gamma=5), 2 / (1 + math.exp(-1)) - 1)
    assert dann_learning_rate(0.0, 0.01) == 0.01
    assert math.isclose(dann_learning_rate(1.0, 0.01), 0.01 / 11 ** 0.75)


def naive_dann_loss(class_logits, labels, domain_logits, domains):
    label_terms = []
    for row, label in zip(class_logits.tolist(), labels.tolist()):
        if label < 0: continue
        top = max(row)
        label_terms.append(top + math.log(sum(math.exp(v - top) for v in row)) - row[label])
    domain_terms = []
    for z, d in zip(domain_logits.tolist(), domains.tolist()):
        p = 1 / (1 + math.exp(-z))
        domain_terms.append(-(d * math.log(p) + (1 - d) * math.log(1 - p)))
    label_loss, domain_loss = sum(label_terms) / len(label_terms), sum(domain_terms) / len(domain_terms)
    return label_loss + domain_loss, label_loss, domain_loss


@pytest.mark.parametrize('rows,classes,unlabelled', [(2, 2, 1), (9, 5, 4), (16, 10, 8), (6, 3, 0)])
def test_dann_loss_equals_a_loop(rows, classes, unlabelled):
    generator = torch.Generator().manual_seed(rows)
    class_logits = torch.randn(rows, classes, dtype=torch.float64, generator=generator) * 3
    labels = torch.randint(classes, (rows,), generator=generator)
    labels[rows - unlabelled:] = -1
    domain_logits = torch.randn(rows, dtype=torch.float64, generator=generator) * 2
    domains = (labels < 0).long()
    for got, expected in zip(dann_loss(class_logits, labels, domain_logits, domains),
                             naive_dann_loss(class_logits, labels, domain_logits, domains)):
        assert math.isclose(got.item(), expected, rel_tol=1e-10)


def grey_images(n=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=generator, dtype=torch.uint8)


@pytest.mark.parametrize('shift', SHIFTS)
def test_shift_images_shapes_and_determinism(shift):
    images = grey_images()
    out = shift_images(images, shift, seed=3)
    assert out.shape == (40, 3, 28, 28) and out.dtype == torch.uint8
    assert torch.equal(out, shift_images(images, shift, seed=3))
    if shift == 'inverted': assert torch.equal(out, 255 - grey_to_rgb(images))
    if shift == 'recoloured':  # white pixels take the garment colour, black ones the background, both constant per image
        pure = torch.zeros(2, 1, 28, 28, dtype=torch.uint8); pure[:, :, :14] = 255
        coloured = shift_images(pure, shift).int()
        assert (coloured[:, :, :14] == coloured[:, :, :1, :1]).all() and (coloured[:, :, 14:] == coloured[:, :, 14:15, :1]).all()
        gap = (coloured[:, :, 0, 0] - coloured[:, :, 27, 0]).abs()
        assert ((gap >= 96) & (gap <= 160)).all()


def test_bad_shift_options():
    with pytest.raises(UsageError, match='unknown shift'): shift_images(grey_images(), 'blurred')
    with pytest.raises(UsageError, match='grey images'): shift_images(grey_to_rgb(grey_images()), 'photo')


def test_domain_pair_halves_are_disjoint_and_target_unlabelled():
    generator = torch.Generator().manual_seed(0)
    # every image unique (its index written into the first pixels), 3 classes of 8
    images = torch.randint(0, 256, (24, 1, 28, 28), generator=generator, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(24, dtype=torch.uint8)
    labels = torch.arange(3).repeat(8)
    data = ImageData('toy', Split(images, labels), Split(images[:6], labels[:6]), ['a', 'b', 'c'])
    source, target = domain_pair(data, 'inverted')
    assert len(source.train) == len(target.train) == 12
    assert torch.bincount(source.train.labels).tolist() == [4, 4, 4]
    assert (target.train.labels == -1).all()
    source_ids = set(source.train.images[:, 0, 0, 0].tolist()); target_ids = set((255 - target.train.images[:, 0, 0, 0]).tolist())
    assert not source_ids & target_ids and source_ids | target_ids == set(range(24))
    assert torch.equal(target.test.labels, data.test.labels) and torch.equal(target.test.images, 255 - grey_to_rgb(images[:6]))
    assert source.mean == target.mean and source.std == target.std


def test_train_dann_history_and_source_only():
    generator = torch.Generator().manual_seed(0)
    features, labels = torch.randn(64, 6, generator=generator), torch.randint(3, (64,), generator=generator)
    target = torch.randn(50, 6, generator=generator) + 2
    torch.manual_seed(0)
    model = DANN(Flat(), 3)
    history = train_dann(model, Split(features, labels), target, steps=12, bs=8, weight=0.5)
    assert all(len(v) == 12 for v in history.values())
    assert history['weight'][0] == 0 and math.isclose(history['weight'][6], 0.5 * dann_weight(0.5))
    assert all(0 <= a <= 1 for a in history['domain_accuracy'])
    baseline = train_dann(DANN(Flat(), 3), Split(features, labels), None, steps=5, bs=8)
    assert baseline['domain_loss'] == [0.0] * 5 and baseline['weight'] == [0.0] * 5
    assert predict(model, features).shape == (64,)


def test_dann_lowers_the_label_loss_on_separable_data():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(3, (300,), generator=generator)
    features = torch.randn(300, 6, generator=generator) * 0.3 + torch.eye(3, 6)[labels] * 3
    torch.manual_seed(0)
    model = DANN(Flat(), 3)
    history = train_dann(model, Split(features, labels), features + 0.5, steps=150, bs=32, lr=0.05)
    assert np.mean(history['label_loss'][-20:]) < 0.5 * np.mean(history['label_loss'][:20])
    assert (predict(model, features) == labels).float().mean() > 0.9


def test_bad_training_options():
    split = Split(torch.randn(8, 6), torch.zeros(8, dtype=torch.int64))
    with pytest.raises(UsageError, match='steps'): train_dann(DANN(Flat(), 2), split, None, steps=0)
    with pytest.raises(UsageError, match='weight'): train_dann(DANN(Flat(), 2), split, None, steps=1, weight=-1)
    with pytest.raises(UsageError, match='bs'): train_dann(DANN(Flat(), 2), split, None, steps=1, bs=0)


@pytest.mark.parametrize('method', ['sinkhorn', 'emd'])
def test_transport_plan_marginals(method):
    generator = torch.Generator().manual_seed(0)
    source, target = torch.randn(30, 3, generator=generator), torch.randn(20, 3, generator=generator) + 1
    plan = fit_transport(source, target, method, reg=0.1).coupling_
    assert plan.shape == (30, 20) and (plan >= 0).all()
    assert np.allclose(plan.sum(1), 1 / 30, rtol=1e-4) and np.allclose(plan.sum(0), 1 / 20, rtol=1e-4)


def test_exact_transport_between_equal_sizes_is_a_permutation():
    generator = torch.Generator().manual_seed(2)
    source = torch.randn(12, 2, generator=generator)
    target = source[torch.randperm(12, generator=generator)] + 5  # a translation: the optimal map is x ↦ x + 5
    transport = fit_transport(source, target, 'emd')
    assert np.allclose(transport.coupling_ * 12, np.round(transport.coupling_ * 12))
    assert np.allclose(transport.transform(Xs=source.double().numpy()), source.double().numpy() + 5)


def test_ot_adapt_recovers_a_shifted_target():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3., 0.], [-3., 0.]])
    source_labels = torch.randint(2, (200,), generator=generator)
    source = centres[source_labels] + torch.randn(200, 2, generator=generator)
    test_labels = torch.randint(2, (200,), generator=generator)
    shift = torch.tensor([-3.5, 6.])  # moves each target class towards the other's source side
    target = centres[torch.randint(2, (200,), generator=generator)] + torch.randn(200, 2, generator=generator) + shift
    test = centres[test_labels] + torch.randn(200, 2, generator=generator) + shift
    result = ot_adapt(source, source_labels, target, test, test_labels, 'emd', samples=200)
    assert result['adapted'] > 0.9 and result['adapted'] > result['source_only'] + 0.2


def test_bad_transport_options():
    x = torch.randn(5, 2)
    with pytest.raises(UsageError, match='unknown OT method'): fit_transport(x, x, 'wasserstein')
    with pytest.raises(UsageError, match='reg'): fit_transport(x, x, 'sinkhorn', reg=0)
    with pytest.raises(UsageError, match='samples'): ot_adapt(x, torch.zeros(5, dtype=torch.int64), x, x, torch.zeros(5, dtype=torch.int64), samples=1)
