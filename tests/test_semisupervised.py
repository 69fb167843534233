"Semi-supervised transfer (lesson 52): the FixMatch loss equals a loop, masked images add nothing, bad options raise."
import pytest
import torch
import torch.nn.functional as F

from sslcourse.core import UsageError, seed_everything
from sslcourse.data import get_data
from sslcourse.models import create_encoder
from sslcourse.experiments.semisupervised import (cutout, confident_pseudo_labels, fixmatch_loss, fixmatch, labelled_and_rest,
                                      pseudo_label_statistics, pseudo_labelling)

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


@pytest.fixture(scope='module')
def data():
    return get_data(limit=20)  # 200 training images, 200 test images


def logits_with_confident_rows(n, classes=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator)
    logits[::2, 1] += 8  # every other row is confident (p > 0.95), the rest are not
    return logits


def naive_fixmatch(labelled, labels, weak, strong, threshold, weight):
    supervised = sum(-torch.log_softmax(labelled[i], 0)[labels[i]] for i in range(len(labels))) / len(labels)
    unlabelled = 0.0
    for b in range(len(weak)):
        q = torch.softmax(weak[b], 0)
        if q.max() >= threshold: unlabelled = unlabelled - torch.log_softmax(strong[b], 0)[int(q.argmax())]
    return supervised + weight * unlabelled / len(weak)


@pytest.mark.parametrize('threshold,weight', [(0.95, 1.0), (0.5, 2.0), (0.999, 0.5)])
def test_fixmatch_loss_equals_a_loop(threshold, weight):
    generator = torch.Generator().manual_seed(1)
    labelled, labels = torch.randn(6, 5, generator=generator), torch.randint(5, (6,), generator=generator)
    weak, strong = logits_with_confident_rows(14), torch.randn(14, 5, generator=generator)
    expected = naive_fixmatch(labelled, labels, weak, strong, threshold, weight)
    torch.testing.assert_close(fixmatch_loss(labelled, labels, weak, strong, threshold, weight), expected)


def test_masked_images_get_no_unlabelled_loss_and_the_target_no_gradient():
    weak = logits_with_confident_rows(8).requires_grad_()
    strong = torch.randn(8, 5, requires_grad=True)
    labelled, labels = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    fixmatch_loss(labelled, labels, weak, strong, 0.95).backward()
    _, mask = confident_pseudo_labels(weak, 0.95)
    assert mask.tolist() == [1.0, 0.0] * 4
    assert strong.grad[mask == 0].abs().max() == 0      # below the threshold: nothing
    assert strong.grad[mask == 1].abs().min() > 0       # above it: trained towards the pseudo-label
    assert weak.grad is None or weak.grad.abs().max() == 0  # the weak view is a fixed target
    # with nothing confident, the loss is the supervised cross-entropy alone
    torch.testing.assert_close(fixmatch_loss(labelled, labels, torch.zeros(8, 5), strong, 0.95),
                               F.cross_entropy(labelled, labels))


def test_cutout_zeroes_one_square_and_keeps_the_rest():
    x = torch.ones(64, 1, 28, 28)
    out = cutout(x, 0.5, torch.Generator().manual_seed(0))
    holes = out == 0
    assert holes.any() and (out[~holes] == 1).all()
    for image in holes[:, 0]:
        rows, columns = image.any(1).nonzero().flatten(), image.any(0).nonzero().flatten()
        assert image.sum() == len(rows) * len(columns)        # a rectangle (a square clipped at the border)
        assert len(rows) <= 15 and len(columns) <= 15           # side at most half of 28 px, rounded up
        assert (rows.diff() == 1).all() and (columns.diff() == 1).all()


def test_labelled_and_rest_partition_the_training_set(data):
    labelled, rest = labelled_and_rest(data, 3, seed=0)
    assert len(labelled) == 30 and len(rest) == len(data.train) - 30
    assert torch.bincount(labelled.labels).tolist() == [3] * 10
    together = torch.cat([labelled.images, rest.images]).flatten(1)
    assert torch.unique(together, dim=0).shape[0] == torch.unique(data.train.images.flatten(1), dim=0).shape[0]


def test_pseudo_label_statistics_equal_a_loop():
    probabilities = torch.softmax(logits_with_confident_rows(40, seed=3), 1)
    hidden = torch.randint(5, (40,), generator=torch.Generator().manual_seed(4)); hidden[::4] = 1
    stats = pseudo_label_statistics(probabilities, hidden, [0.3, 0.95, 1.0])
    for i, threshold in enumerate([0.3, 0.95, 1.0]):
        passed = [j for j in range(40) if probabilities[j].max() >= threshold]
        assert stats['kept'][i] == pytest.approx(len(passed) / 40)
        right = sum(int(probabilities[j].argmax() == hidden[j]) for j in passed)
        assert stats['accuracy'][i] == pytest.approx(right / len(passed) if passed else 0.0)


@pytest.mark.parametrize('options,fragment', [(dict(threshold=0.0), 'threshold'), (dict(threshold=1.5), 'threshold'),
                                              (dict(unlabelled_weight=-1.0), 'unlabelled_weight'),
                                              (dict(ratio=0), 'ratio'), (dict(steps=0), 'steps')])
def test_bad_options_raise_usage_error(data, options, fragment):
    with pytest.raises(UsageError, match=fragment):
        fixmatch(create_encoder('convnet', 1), data, 2, **options)


def test_pseudo_labelling_bad_options(data):
    with pytest.raises(UsageError, match='rounds'):
        pseudo_labelling(create_encoder('convnet', 1), data, 2, rounds=0)


def test_a_tiny_fixmatch_run_lowers_the_loss_and_scores_pseudo_labels(data):
    seed_everything(0)
    result = fixmatch(create_encoder('convnet', 1, ), data, 5, steps=24, bs=16, ratio=2, threshold=0.5, lr=3e-3,
                      log_every=8)
    history = result['history']
    assert history['step'] == [8, 16, 24]
    assert history['loss'][-1] < history['loss'][0]
    assert all(0 <= m <= 1 for m in history['mask'])
    assert all(a is None or 0 <= a <= 1 for a in history['pseudo_accuracy'])
    assert 0 <= result['accuracy'] <= 1


def test_pseudo_labelling_scores_kept_labels_against_the_hidden_ones(data):
    # 10 classes: every top probability is at least 0.1, so τ = 0.11 keeps some images even from a barely trained model
    result = pseudo_labelling(create_encoder('convnet', 1), data, 5, threshold=0.11, steps=10, retrain_steps=10)
    first = result['rounds'][1]
    confidence, pseudo = result['probabilities'].max(1)
    kept = confidence >= 0.11
    assert len(result['rounds']) == 2 and 0 < first['kept'] == int(kept.sum())
    assert first['pseudo_accuracy'] == pytest.approx((pseudo[kept] == result['hidden_labels'][kept]).float().mean().item())
