"Multi-task learning (lesson 53): the loss combiner in both modes, partial labels, head shapes, one-line UsageErrors."
import math

import pytest
import torch
import torch.nn.functional as F

from sslcourse.core import UsageError, seed_everything
from sslcourse.data import get_data
from sslcourse.experiments.multitask import (TASKS, MultiTaskNet, LossCombiner, partial_label_loss, partial_labels,
                                 random_rotations, task_losses, train_multitask)

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


def random_losses(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {task: torch.rand((), generator=generator) * 3 for task in TASKS}


@pytest.mark.parametrize('weights', [None, [1.0, 0.5, 2.0], [0.0, 3.0, 0.25]])
def test_fixed_weights_equal_the_weighted_sum(weights):
    losses = random_losses()
    expected = sum((1.0 if weights is None else w) * float(losses[t]) for t, w in zip(TASKS, weights or [1] * 3))
    assert math.isclose(float(LossCombiner(TASKS, 'fixed', weights)(losses)), expected, rel_tol=1e-6)


def test_fixed_weights_only_add_the_named_tasks():
    losses = random_losses(1)
    combiner = LossCombiner(['reconstruction', 'classification'], weights=[2.0, 1.0])
    expected = 2 * float(losses['reconstruction']) + float(losses['classification'])
    assert math.isclose(float(combiner(losses)), expected, rel_tol=1e-6)


def test_uncertainty_weighting_value_and_gradient_match_the_formula():
    losses = {t: v.requires_grad_() for t, v in random_losses(2).items()}
    combiner = LossCombiner(TASKS, 'uncertainty')
    s = [0.4, -1.1, 2.0]
    with torch.no_grad(): combiner.log_variances.copy_(torch.tensor(s))
    total = combiner(losses)
    naive = sum(math.exp(-s_i) * losses[t].item() + s_i for t, s_i in zip(TASKS, s))
    assert math.isclose(float(total), naive, rel_tol=1e-6)
    total.backward()
    for i, (t, s_i) in enumerate(zip(TASKS, s)):
        assert math.isclose(float(combiner.log_variances.grad[i]), 1 - math.exp(-s_i) * losses[t].item(), rel_tol=1e-5)
        assert math.isclose(float(losses[t].grad), math.exp(-s_i), rel_tol=1e-6)  # the weight each loss gets
    torch.testing.assert_close(combiner.weights(), torch.exp(-torch.tensor(s)))


def test_uncertainty_weights_settle_at_inverse_loss():
    losses = {'classification': torch.tensor(2.0), 'rotation': torch.tensor(0.5)}
    combiner = LossCombiner(list(losses), 'uncertainty')
    optimizer = torch.optim.SGD(combiner.parameters(), lr=0.1)
    for _ in range(500):
        optimizer.zero_grad(); combiner(losses).backward(); optimizer.step()
    torch.testing.assert_close(combiner.weights(), torch.tensor([0.5, 2.0]), rtol=1e-3, atol=1e-3)


def test_partial_label_loss_equals_a_loop_over_the_labelled_samples():
    generator = torch.Generator().manual_seed(3)
    for trial in range(5):
        logits = torch.randn(20, 10, generator=generator)
        labels = torch.randint(10, (20,), generator=generator)
        labels[torch.rand(20, generator=generator) < 0.6] = -1
        labels[trial] = 4  # at least one labelled
        loop = [-torch.log_softmax(logits[j], 0)[labels[j]] for j in range(20) if labels[j] >= 0]
        torch.testing.assert_close(partial_label_loss(logits, labels), torch.stack(loop).mean())


def test_partial_label_loss_is_zero_with_no_labels_and_its_gradient_finite():
    logits = torch.randn(6, 10, requires_grad=True)
    loss = partial_label_loss(logits, torch.full((6,), -1))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_fully_labelled_batch_is_plain_cross_entropy():
    logits, labels = torch.randn(8, 10), torch.randint(10, (8,))
    torch.testing.assert_close(partial_label_loss(logits, labels), F.cross_entropy(logits, labels))


def test_partial_labels_keep_per_class_of_each_class():
    labels = get_data(limit=30).train.labels
    partial = partial_labels(labels, per_class=3, seed=1)
    kept = partial >= 0
    assert torch.equal(torch.bincount(partial[kept]), torch.full((10,), 3))
    assert torch.equal(partial[kept], labels[kept])
    assert torch.equal(partial_labels(labels, 3, seed=1), partial)  # seeded


@pytest.mark.parametrize('tasks', [TASKS, ('classification',), ('rotation', 'reconstruction')])
def test_heads_output_shapes(tasks):
    seed_everything(0)
    net = MultiTaskNet(tasks, channels=1, size=28, num_classes=10)
    x = torch.randn(5, 1, 28, 28)
    rotated, turns = random_rotations(x, torch.Generator().manual_seed(0))
    out = net(x, rotated)
    assert out['features'].shape == (5, 256)
    assert set(out) - {'features'} == set(tasks)
    shapes = dict(classification=(5, 10), rotation=(5, 4), reconstruction=(5, 1, 28, 28))
    for task in tasks: assert out[task].shape == shapes[task]
    losses = task_losses(out, x, torch.tensor([1, -1, -1, 3, -1]), turns)
    assert set(losses) == set(tasks) and all(torch.isfinite(v) for v in losses.values())


def test_decoder_handles_sizes_not_divisible_by_four():
    net = MultiTaskNet(('reconstruction',), channels=3, size=30)
    assert net(torch.randn(2, 3, 30, 30))['reconstruction'].shape == (2, 3, 30, 30)


def test_random_rotations_turn_each_image_by_its_label():
    x = torch.randn(12, 1, 8, 8)
    rotated, turns = random_rotations(x, torch.Generator().manual_seed(5))
    assert set(turns.tolist()) <= {0, 1, 2, 3} and len(set(turns.tolist())) > 1
    for i in range(12): assert torch.equal(rotated[i], torch.rot90(x[i], int(turns[i]), (1, 2)))


@pytest.mark.parametrize('make', [
    lambda: LossCombiner(['classification', 'depth']),
    lambda: LossCombiner([]),
    lambda: LossCombiner(TASKS, weights=[1.0, -0.5, 1.0]),
    lambda: LossCombiner(TASKS, weights=[0.0, 0.0, 0.0]),
    lambda: LossCombiner(TASKS, weights=[1.0, 1.0]),
    lambda: LossCombiner(TASKS, mode='gradnorm'),
    lambda: LossCombiner(TASKS, mode='uncertainty', weights=[1, 1, 1]),
    lambda: LossCombiner(['rotation', 'rotation']),
    lambda: MultiTaskNet(['segmentation']),
    lambda: MultiTaskNet(()),
])
def test_impossible_options_raise_one_line_usage_errors(make):
    with pytest.raises(UsageError) as error: make()
    assert '\n' not in str(error.value) and str(error.value)


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(UsageError, match='classification, rotation, reconstruction'): MultiTaskNet(['depth'])


def test_short_training_run_lowers_the_loss_and_records_the_weights():
    data = get_data(limit=40)  # 400 training images
    run = train_multitask(data, TASKS, per_class=5, mode='uncertainty', steps=12, labelled_bs=8, unlabelled_bs=8)
    loss = run['history']['loss']
    assert len(loss) == 12 and sum(loss[-3:]) < sum(loss[:3])
    assert set(run['history']['weights']) == set(TASKS) and abs(run['history']['weights']['rotation'][0] - 1) < 0.01  # starts at 1
    assert set(run['test']) == set(TASKS) and 0 <= run['test']['classification'] <= 1
    with pytest.raises(UsageError): train_multitask(data, TASKS, per_class=0, steps=1)
