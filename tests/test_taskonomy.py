"Taskonomy in miniature (lesson 56): target sets, heads against naive references, normalisations, a tiny study."
import math

import pytest
import torch

from sslcourse.core import UsageError
from sslcourse.data import Split, get_data
from sslcourse.models import create_encoder
from sslcourse.experiments.taskonomy import (TASKS, BASELINES, NORMALISATIONS, PixelEncoder, affinity_table, check_tasks,
                                 class_half, diagonal_best, make_target, normalise, pair_accuracy, ridge_r2,
                                 score, train_source, transfer_study)

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


@pytest.fixture(scope='module')
def tiny():
    return get_data(limit=20)


@pytest.mark.parametrize('tasks, message', [('colour', "unknown task 'colour'"), ((), 'empty'),
                                            (('rotation', 'rotation'), 'once')])
def test_bad_tasks_are_one_line_usage_errors(tasks, message):
    with pytest.raises(UsageError, match=message) as error: check_tasks(tasks)
    assert '\n' not in str(error.value)


def test_bad_options_are_usage_errors(tiny):
    with pytest.raises(UsageError, match='normalisation'): normalise([[1.0]], ['random init'], 'zscore')
    with pytest.raises(UsageError, match='per_class'): make_target('rotation', tiny, per_class=0)
    with pytest.raises(UsageError, match='need 2000 images'): make_target('jigsaw', tiny, per_class=200)
    with pytest.raises(UsageError, match='epochs'): train_source('simclr', tiny, epochs=0)


def test_class_half_keeps_and_relabels():
    split = Split(torch.zeros(6, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 5, 9, 3, 7, 4]))
    half = class_half(split, (5, 6, 7, 8, 9))
    assert half.labels.tolist() == [0, 4, 2] and len(half.images) == 3


def test_targets_have_the_promised_sizes(tiny):
    per_class, test_size = 3, 40
    sizes = {}
    for task in TASKS:
        target = make_target(task, tiny, per_class, test_size)
        (x, y), (x_test, y_test) = target['train'], target['test']
        assert len(x) == len(y) and len(x_test) == len(y_test) and len(x_test) <= test_size
        sizes[task] = len(x)
    assert sizes['classes A'] == sizes['classes B'] == 5 * per_class
    assert sizes['rotation'] == 4 * per_class and sizes['jigsaw'] == 10 * per_class
    assert make_target('jigsaw', tiny, per_class, test_size)['train'][0].shape[1:3] == (9, 1)
    # built once, reproducibly: the same seed gives the same sets
    again = make_target('simclr', tiny, per_class, test_size, seed=0)['train'][0]
    assert torch.equal(again, make_target('simclr', tiny, per_class, test_size, seed=0)['train'][0])


def naive_pair_accuracy(z1, z2):
    hits = 0
    for i in range(len(z1)):
        similarity = [float(torch.nn.functional.cosine_similarity(z1[i], z2[j], dim=0)) for j in range(len(z2))]
        hits += max(range(len(z2)), key=similarity.__getitem__) == i
    return hits / len(z1)


def test_pair_accuracy_equals_a_loop():
    generator = torch.Generator().manual_seed(3)
    z1 = torch.randn(25, 6, generator=generator)
    z2 = torch.randn(25, 6, generator=generator)
    z2[:10] = z1[:10] + 0.01 * torch.randn(10, 6, generator=generator)
    assert math.isclose(pair_accuracy(z1, z2), naive_pair_accuracy(z1, z2))


def test_ridge_r2_recovers_a_linear_map_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    a, a_test = torch.randn(200, 30, generator=generator), torch.randn(100, 30, generator=generator)
    weights = torch.randn(30, 4, generator=generator)
    assert ridge_r2(a, a @ weights, a_test, a_test @ weights) > 0.99
    assert ridge_r2(a, torch.randn(200, 4, generator=generator), a_test, torch.randn(100, 4, generator=generator)) < 0.1


def test_normalisations():
    scores = [[0.9, -3.0], [0.6, -1.0], [0.5, -2.0], [0.7, -4.0]]
    rows = ['classes A', 'vicreg', 'random init', 'raw pixels']
    relative = normalise(scores, rows, 'relative')
    assert torch.allclose(relative[:, 0], torch.tensor([1.0, 0.25, 0.0, 0.5], dtype=torch.float64))
    assert torch.allclose(relative[:, 1], torch.tensor([-1.0, 1.0, 0.0, -2.0], dtype=torch.float64))
    assert normalise(scores, rows, 'rank').tolist() == [[1, 3], [3, 1], [4, 2], [2, 4]]
    assert torch.equal(normalise(scores, rows, 'score'), torch.tensor(scores, dtype=torch.float64))


def test_every_target_scores_any_encoder(tiny):
    encoder = create_encoder('convnet', 1).eval()
    for task in TASKS:
        target = make_target(task, tiny, per_class=2, test_size=20)
        assert math.isfinite(score(encoder, target)) and math.isfinite(score(PixelEncoder(), target))


def test_tiny_study_shape_and_diagonal():
    "Two label sets, trained for a few epochs: each class half is its own best source."
    data = get_data(limit=60)
    study = transfer_study(data, sources=('classes A', 'classes B'), targets=('classes A', 'classes B'), epochs=4,
                           bs=32, per_class=5, test_size=300, log=lambda *args: None)
    assert study['rows'] == ['classes A', 'classes B', *BASELINES]
    assert torch.tensor(study['scores']).shape == (4, 2)
    assert diagonal_best(study) == {'classes A': True, 'classes B': True}
    for how in NORMALISATIONS: assert affinity_table(study, how).count('\n') == 5
