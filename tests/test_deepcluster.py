"DeepCluster (lesson 44): k-means with the empty-cluster rule, the uniform sampler, the per-epoch reclustering, bad options exit 2."
import pytest
import torch
from fastai.callback.core import Callback
from sklearn.metrics import normalized_mutual_info_score

import sslcourse.cli as cli
from tests.fixtures import write_fashion_mnist
from sslcourse.core import UsageError, seed_everything
from sslcourse.data import get_data
from sslcourse.train.learner import ssl_learner, fit_ssl
from sslcourse.methods.clustering.deepcluster import kmeans, pca_whiten, uniform_order

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


@pytest.fixture(scope='module')
def data():
    return get_data(limit=20)  # 200 training images


def blobs(seed=0, per_blob=80):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0., 0.], [8., 0.], [0., 8.], [8., 8.]])
    points = torch.cat([centre + 0.5 * torch.randn(per_blob, 2, generator=generator) for centre in centres])
    return points, torch.arange(len(centres)).repeat_interleave(per_blob), centres


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_kmeans_recovers_well_separated_blobs(seed):
    points, truth, centres = blobs(seed)
    centroids, assignments, reseeded = kmeans(points, 4, 20, torch.Generator().manual_seed(seed))
    assert normalized_mutual_info_score(truth, assignments) == pytest.approx(1.0)
    means = torch.stack([points[truth == blob].mean(0) for blob in range(4)])
    assert torch.cdist(centroids, means).min(1).values.max() < 1e-4 and reseeded == 0  # each centroid: one blob's mean


def test_kmeans_is_deterministic_given_the_generator():
    points = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    first = kmeans(points, 10, 5, torch.Generator().manual_seed(3))
    second = kmeans(points, 10, 5, torch.Generator().manual_seed(3))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_an_empty_cluster_is_reseeded_and_not_empty_after():
    points, truth, centres = blobs()
    far = torch.cat([centres, torch.tensor([[100., 100.]])])  # the fifth centroid wins no point: its cluster empties
    first = ((points[:, None] - far[None]) ** 2).sum(2).argmin(1)
    assert torch.bincount(first, minlength=5)[4] == 0
    centroids, assignments, reseeded = kmeans(points, 5, 1, init=far)
    sizes = torch.bincount(assignments, minlength=5)
    assert reseeded == 1 and (sizes > 0).all()
    assert torch.cdist(centroids[4:], points).min() < 5  # the re-seeded centroid moved next to the data
    # the new cluster is half of one blob: the split cluster's points went to the two, nothing else moved
    donors = truth[assignments == 4].unique()
    assert len(donors) == 1 and (assignments[truth != donors[0]] == truth[truth != donors[0]]).all()


def test_identical_points_are_split_in_halves():
    points = torch.tensor([[0., 0.], [1., 1.]]).repeat(10, 1)  # 2 distinct points, 4 clusters: two must empty
    _, assignments, reseeded = kmeans(points, 4, 3)
    assert reseeded >= 2 and (torch.bincount(assignments, minlength=4) > 0).all()


def test_pca_whiten_gives_unit_rows_and_equal_variance_axes():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 16, generator=generator) * torch.logspace(0, 2, 16)  # axes of very different variances
    z = pca_whiten(x, 4)
    assert z.shape == (2000, 4) and torch.allclose(z.norm(dim=1), torch.ones(2000), atol=1e-5)
    variances = z.var(0)  # whitened before the L2 step: no axis dominates afterwards
    assert variances.max() / variances.min() < 1.5
    assert pca_whiten(x, 100).shape == (2000, 16)  # more dimensions than features: all of them


def test_uniform_order_visits_non_empty_clusters_equally_and_never_empty_ones():
    assignments = torch.cat([torch.zeros(1000), torch.ones(10), torch.full((5,), 3), torch.full((300,), 4)]).long()
    count = len(assignments)
    order = uniform_order(assignments, count, torch.Generator().manual_seed(0))
    assert len(order) == count and order.dtype == torch.int64
    visits = torch.bincount(assignments[order], minlength=5)
    assert visits[2] == 0  # empty: never sampled
    per_cluster = -(-count // 4)
    assert visits[[0, 1, 3, 4]].min() >= per_cluster - (4 * per_cluster - count) and visits.max() <= per_cluster
    large = order[assignments[order] == 0]
    assert len(large.unique()) == len(large)  # a big cluster gives distinct images; small ones repeat theirs
    assert len(order[assignments[order] == 3].unique()) == 5


class Watch(Callback):
    "After the method's epoch start: the pseudo-labels, the head, and whether the optimiser holds state for the head."
    order = 7  # after MethodCallback (5), whose before_epoch clusters and resets the head
    def before_fit(self): self.pseudo, self.starts, self.ends, self.head_state = [], [], [], []
    def before_epoch(self):
        method = self.learn.method
        self.pseudo.append(method.assignments.clone()); self.starts.append(method.head.weight.detach().clone())
        self.head_state.append(any(p in self.learn.opt.opt.state for p in method.head.parameters()))
    def after_epoch(self): self.ends.append(self.learn.method.head.weight.detach().clone())


def test_pseudo_labels_change_and_the_head_is_reset_every_epoch(data):
    seed_everything(0)
    watch = Watch()
    learn = ssl_learner('deepcluster', data, bs=50, device='cpu', knn_every=None, probe=False, progress='none',
                        clusters=10, cbs=[watch])
    fit_ssl(learn, 2)
    first, second = watch.pseudo
    assert len(first.unique()) == 10 and not torch.equal(first, second)  # every cluster used; the labels moved
    assert not torch.allclose(watch.starts[1], watch.ends[0])  # epoch 2 starts from a fresh head, not epoch 1's
    assert not any(watch.head_state)  # and with no AdamW moments left from the old classes
    history = learn.method.cluster_history
    assert [h['epoch'] for h in history] == [1, 2] and history[0]['nmi_previous'] is None
    assert 0 < history[1]['nmi_previous'] < 1 and 0 < history[1]['nmi_labels'] < 1
    assert all(h['empty'] == 0 and h['smallest'] >= 1 for h in history)
    assert 'assignments' in learn.method.state_dict()  # checkpointed with the weights


def test_loss_is_cross_entropy_against_the_stored_pseudo_labels(data):
    seed_everything(0)
    learn = ssl_learner('deepcluster', data, bs=50, device='cpu', knn_every=None, probe=False, progress='none', clusters=10)
    method = learn.method
    method.assignments.copy_(torch.arange(len(data.train)) % 10)
    indices = torch.tensor([5, 17, 123])
    outputs = method(*method.make_views(data.train.images[indices]))
    expected = sum(torch.logsumexp(outputs['logits'][row], 0) - outputs['logits'][row, int(indices[row]) % 10]
                   for row in range(3)) / 3
    torch.testing.assert_close(method.loss(outputs, data.train.labels[indices], indices), expected)


@pytest.mark.parametrize('options, fragment', [
    (dict(clusters=201), 'between 2 and the number of training images \\(200\\)'), (dict(clusters=1), 'clusters=1'),
    (dict(pca_dim=0), 'pca_dim'), (dict(kmeans_iterations=0), 'kmeans_iterations')])
def test_impossible_options_raise_usage_error(data, options, fragment):
    with pytest.raises(UsageError, match=fragment) as error:
        ssl_learner('deepcluster', data, bs=50, device='cpu', knn_every=None, probe=False, progress='none', **options)
    assert '\n' not in str(error.value)


def test_cli_more_clusters_than_images_exits_2(tmp_path, monkeypatch, capsys):
    "200 training images cannot fill 500 clusters: one line, status 2, nothing trained."
    monkeypatch.chdir(tmp_path)
    write_fashion_mnist(tmp_path, per_class_train=20)
    code = cli.main(['pretrain', 'deepcluster', '--data', 'fashion_mnist', '--data-dir', str(tmp_path), '--device', 'cpu',
                     '--epochs', '1', '-o', 'clusters=500', '--out', str(tmp_path / 'out')])
    out, err = capsys.readouterr()
    assert code == 2 and 'Traceback' not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('sslcourse: error: ') and 'clusters=500' in lines[0], err
    assert not (tmp_path / 'out' / 'checkpoint.pth').exists()


def test_cli_json_records_the_cluster_history(tmp_path):
    "NMI and cluster sizes per epoch reach the JSON record, one entry per label step."
    import json
    record = tmp_path / 'run.json'
    status = cli.main(['pretrain', 'deepcluster', '--limit', '20', '--epochs', '2', '--bs', '64', '--device', 'cpu',
                       '-o', 'clusters=10', '--out', str(tmp_path / 'out'), '--json', str(record)])
    history = json.loads(record.read_text())['cluster_history']
    assert status == 0 and [h['epoch'] for h in history] == [1, 2] and history[1]['nmi_previous'] is not None


def test_resume_keeps_the_cluster_history(tmp_path):
    "The history is part of the method's state, so a resumed run's JSON still holds the label steps before the resume."
    import json
    common = ['pretrain', 'deepcluster', '--limit', '20', '--bs', '64', '--device', 'cpu', '-o', 'clusters=10',
              '--out', str(tmp_path / 'out'), '--json', str(tmp_path / 'run.json')]
    assert cli.main([*common, '--epochs', '1']) == 0
    assert cli.main([*common, '--epochs', '2', '--resume']) == 0
    history = json.loads((tmp_path / 'run.json').read_text())['cluster_history']
    assert [h['epoch'] for h in history] == [1, 2]
