"Few-shot (lesson 54): episode invariants, prototypes and the classifier against loops, the CI, impossible episodes."
import math

import pytest
import torch

from sslcourse.core import UsageError
from sslcourse.data import Split
from sslcourse.experiments.fewshot import (select_classes, episode, prototypes, prototype_logits, prototype_classify, mean_ci,
                               evaluate_episodes, train_protonet)
from sslcourse.models import convnet

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


def uneven_labels():
    "Six classes of 7 to 30 examples, shuffled, with a few unlabeled (-1) entries that must never be drawn."
    generator = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.full((count,), cls) for cls, count in enumerate([7, 12, 30, 9, 20, 15])]
                       + [torch.full((5,), -1)])
    return labels[torch.randperm(len(labels), generator=generator)]


@pytest.mark.parametrize('ways,shots,queries', [(2, 1, 1), (4, 1, 6), (5, 5, 2), (6, 3, 4)])
def test_episode_invariants_over_many_seeds(ways, shots, queries):
    labels = uneven_labels()
    for seed in range(50):
        support, query, classes = episode(labels, ways, shots, queries, torch.Generator().manual_seed(seed))
        assert support.shape == (ways * shots,) and query.shape == (ways * queries,) and classes.shape == (ways,)
        assert len(classes.unique()) == ways and (classes >= 0).all()
        assert not set(support.tolist()) & set(query.tolist())  # disjoint
        assert len(support.unique()) == len(support) and len(query.unique()) == len(query)  # no repeats
        # class by class, in the order of `classes`: exactly `shots` support and `queries` query images each
        assert torch.equal(labels[support], classes.repeat_interleave(shots))
        assert torch.equal(labels[query], classes.repeat_interleave(queries))


def test_episode_is_seeded_and_covers_classes():
    labels = uneven_labels()
    draw = lambda seed: episode(labels, 3, 2, 2, torch.Generator().manual_seed(seed))
    assert all(torch.equal(a, b) for a, b in zip(draw(7), draw(7)))
    seen = set()
    for seed in range(40): seen |= set(draw(seed)[2].tolist())
    assert seen == set(range(6))  # every class gets picked sometimes


@pytest.mark.parametrize('ways,shots,queries,message', [
    (7, 1, 1, '7-way episodes are impossible with 6 classes'),
    (1, 1, 1, '1-way episodes are impossible'),
    (2, 0, 1, 'shots must be at least 1'),
    (2, 1, 0, 'queries must be at least 1'),
    (2, 5, 3, r'5 shots \+ 3 queries need 8 images per class but class 0 has 7'),
])
def test_impossible_episodes_raise_one_line_usage_errors(ways, shots, queries, message):
    with pytest.raises(UsageError, match=message) as error:
        episode(uneven_labels(), ways, shots, queries)
    assert '\n' not in str(error.value)
    with pytest.raises(UsageError, match=message):
        evaluate_episodes(torch.randn(len(uneven_labels()), 3), uneven_labels(), ways, shots, queries, episodes=5)


def test_prototypes_equal_a_loop_mean():
    generator = torch.Generator().manual_seed(1)
    features, labels = torch.randn(40, 8, generator=generator), torch.randint(0, 5, (40,), generator=generator)
    expected = torch.stack([sum(f for f, y in zip(features, labels) if y == k) / int((labels == k).sum())
                            for k in range(5)])
    assert torch.allclose(prototypes(features, labels), expected, atol=1e-6)
    assert torch.allclose(prototypes(features, labels, 5), expected, atol=1e-6)


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
def test_prototype_classify_equals_a_naive_loop(metric):
    generator = torch.Generator().manual_seed(2)
    queries, centres = torch.randn(30, 6, generator=generator), torch.randn(4, 6, generator=generator)
    expected = []
    for q in queries:
        if metric == 'euclidean': scores = [-sum((a - b).item() ** 2 for a, b in zip(q, c)) for c in centres]
        else: scores = [torch.dot(q, c).item() / (q.norm().item() * c.norm().item()) for c in centres]
        expected.append(max(range(4), key=lambda k: scores[k]))
    assert prototype_classify(queries, centres, metric).tolist() == expected
    logits = prototype_logits(queries, centres, metric)
    assert logits.shape == (30, 4)
    if metric == 'euclidean':
        assert torch.allclose(logits, -((queries[:, None] - centres[None]) ** 2).sum(-1), atol=1e-4)


def test_unknown_metric_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown metric 'manhattan'; choose from: euclidean, cosine"):
        prototype_classify(torch.randn(3, 2), torch.randn(2, 2), 'manhattan')


def test_confidence_interval_on_a_known_case():
    mean, half = mean_ci(torch.tensor([0., 1., 0., 1.]))
    assert mean == 0.5 and math.isclose(half, 1.96 * math.sqrt(1 / 3) / 2, rel_tol=1e-12)
    assert mean_ci(torch.full((10,), 0.7)) == pytest.approx((0.7, 0.0))
    with pytest.raises(UsageError, match='at least 2 values'): mean_ci(torch.tensor([1.0]))


def test_evaluate_episodes_perfect_on_separable_features_and_matches_its_own_loop():
    labels = torch.arange(5).repeat_interleave(20)
    separable = 10 * torch.eye(5, 7)[labels] + 0.1 * torch.randn(100, 7, generator=torch.Generator().manual_seed(3))
    result = evaluate_episodes(separable, labels, 4, 2, 5, episodes=20, seed=0)
    assert result['mean'] == 1.0 and result['ci95'] == 0.0
    # noisy features: the per-episode accuracies equal an explicit re-run of the same seeded episodes
    noisy = torch.randn(100, 7, generator=torch.Generator().manual_seed(4))
    result = evaluate_episodes(noisy, labels, 3, 2, 4, episodes=10, seed=5)
    generator, again = torch.Generator().manual_seed(5), []
    for _ in range(10):
        support, query, _ = episode(labels, 3, 2, 4, generator)
        centres = torch.stack([noisy[support[k * 2:(k + 1) * 2]].mean(0) for k in range(3)])
        predicted = [min(range(3), key=lambda k: ((noisy[q] - centres[k]) ** 2).sum().item()) for q in query]
        again.append(sum(p == k // 4 for k, p in enumerate(predicted)) / len(query))
    assert torch.allclose(result['accuracies'], torch.tensor(again))
    assert result['mean'] == pytest.approx(sum(again) / 10)


def test_select_classes_renumbers_in_the_order_given():
    split = Split(torch.arange(8).view(8, 1, 1, 1).to(torch.uint8), torch.tensor([3, 0, 9, 3, -1, 0, 9, 5]))
    chosen = select_classes(split, [9, 3])
    assert chosen.images.flatten().tolist() == [0, 2, 3, 6] and chosen.labels.tolist() == [1, 0, 1, 0]
    with pytest.raises(UsageError, match='distinct classes'): select_classes(split, [3, 3])


def test_protonet_training_lowers_the_episodic_loss_and_changes_the_encoder():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(12)
    # class k has a bright square in quadrant k: learnable in a few dozen episodes
    images = (40 * torch.rand(48, 1, 12, 12, generator=generator)).to(torch.uint8)
    for index, k in enumerate(labels.tolist()):
        row, column = divmod(k, 2)
        images[index, 0, row * 6:row * 6 + 6, column * 6:column * 6 + 6] += 200
    encoder = convnet(1, (8, 16))
    before = [p.detach().clone() for p in encoder.parameters()]
    losses = train_protonet(encoder, images, labels, ways=4, shots=2, queries=3, steps=40, lr=3e-3)
    assert len(losses) == 40 and all(isinstance(v, float) for v in losses)
    assert sum(losses[-10:]) < sum(losses[:10])
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder.parameters()))


@pytest.mark.parametrize('options,message', [
    (dict(steps=0), 'steps must be at least 1'),
    (dict(ways=5), '5-way episodes are impossible with 4 classes'),
    (dict(shots=10, queries=3), '10 shots \\+ 3 queries need 13 images per class'),
    (dict(metric='dot'), "unknown metric 'dot'"),
])
def test_protonet_refuses_impossible_requests_before_training(options, message):
    encoder = convnet(1, (4,))
    before = [p.detach().clone() for p in encoder.parameters()]
    settings = {**dict(ways=4, shots=2, queries=3, steps=5), **options}
    with pytest.raises(UsageError, match=message):
        train_protonet(encoder, torch.zeros(48, 1, 8, 8, dtype=torch.uint8), torch.arange(4).repeat_interleave(12),
                       **settings)
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters()))
