"SeLa (lesson 45): the label step is Sinkhorn's argmax and balanced, the head is kept, the loss, bad options exit 2."
import pytest
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback

import sslcourse.cli as cli
from tests.fixtures import write_fashion_mnist
from sslcourse.core import UsageError, seed_everything
from sslcourse.data import get_data
from sslcourse.evaluate import embed
from sslcourse.train.learner import ssl_learner, fit_ssl
from sslcourse.losses import sinkhorn
from sslcourse.methods.clustering.sela import self_label, random_equipartition, head_log_probabilities

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


@pytest.fixture(scope='module')
def data():
    return get_data(limit=20)  # 200 training images


def random_log_probabilities(n=1000, k=10, seed=0, spread=1.0):
    generator = torch.Generator().manual_seed(seed)
    return F.log_softmax(spread * torch.randn(n, k, generator=generator), 1)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_label_step_is_a_near_equal_partition(seed):
    "A head with a biased favourite class: its argmax is far from balanced, Sinkhorn's labels are within 5% of N/K."
    log_probabilities = random_log_probabilities(seed=seed)
    log_probabilities = F.log_softmax(log_probabilities + torch.linspace(0, 3, 10), 1)  # class 9 favoured
    assert torch.bincount(log_probabilities.argmax(1), minlength=10).max() > 300
    labels, codes = self_label(log_probabilities, epsilon=0.04, iterations=100)
    sizes = torch.bincount(labels, minlength=10)
    assert (sizes > 0).all() and (sizes - 100).abs().max() <= 5, sizes
    torch.testing.assert_close(codes.sum(1), torch.ones(1000))        # rows exact
    torch.testing.assert_close(codes.sum(0), torch.full((10,), 100.), rtol=0, atol=1.0)  # columns within 1% of N/K


def test_labels_are_the_argmax_of_sinkhorn_on_the_log_probabilities():
    log_probabilities = random_log_probabilities(n=500, k=7, seed=3)
    labels, codes = self_label(log_probabilities, epsilon=0.1, iterations=20)
    expected = sinkhorn(log_probabilities, 0.1, 20)
    torch.testing.assert_close(codes, expected)
    assert torch.equal(labels, expected.argmax(1))


def test_random_equipartition_is_exact_and_seeded():
    first = random_equipartition(103, 10, torch.Generator().manual_seed(0))
    sizes = torch.bincount(first, minlength=10)
    assert sizes.min() == 10 and sizes.max() == 11 and sizes.sum() == 103
    assert torch.equal(first, random_equipartition(103, 10, torch.Generator().manual_seed(0)))
    assert not torch.equal(first, random_equipartition(103, 10, torch.Generator().manual_seed(1)))


class Watch(Callback):
    "After the method's label step: the labels, the head, and whether the optimiser holds state for the head."
    order = 7  # after MethodCallback (5), whose before_epoch runs the label step
    def before_fit(self): self.pseudo, self.starts, self.ends, self.head_state, self.log_probabilities = [], [], [], [], []
    def before_epoch(self):
        method = self.learn.method
        self.pseudo.append(method.assignments.clone()); self.starts.append(method.head.weight.detach().clone())
        self.head_state.append(any(p in self.learn.opt.opt.state for p in method.head.parameters()))
    def after_epoch(self):
        method = self.learn.method
        self.ends.append(method.head.weight.detach().clone())
        # the log-probabilities the next label step will see, computed here by hand: clean images, eval mode
        features = embed(method.encoder, self.learn.dls.train.split.images, self.learn.data)
        self.log_probabilities.append(F.log_softmax(method.head(features).detach(), 1))


def test_label_steps_keep_the_head_and_use_sinkhorn_on_the_heads_predictions(data):
    seed_everything(0)
    watch = Watch()
    learn = ssl_learner('sela', data, bs=50, device='cpu', knn_every=None, probe=False, progress='none',
                        clusters=10, cbs=[watch])
    fit_ssl(learn, 3)
    first = watch.pseudo[0]
    assert sorted(torch.bincount(first, minlength=10).tolist()) == [20] * 10  # a random equal partition to start
    for step in (1, 2):
        expected = sinkhorn(watch.log_probabilities[step - 1], 0.04, 100).argmax(1)
        assert torch.equal(watch.pseudo[step], expected)  # labels: argmax of Sinkhorn's codes on the head's log-probs
    for step in (1, 2):
        torch.testing.assert_close(watch.starts[step], watch.ends[step - 1])  # the head carries on, not re-initialised
    assert watch.head_state[1] and watch.head_state[2]  # and so does its AdamW state
    history = learn.method.cluster_history
    assert [h['epoch'] for h in history] == [1, 2, 3] and history[0]['nmi_previous'] is None
    assert 0 < history[2]['nmi_previous'] <= 1 and history[2]['changed'] == int((watch.pseudo[2] != watch.pseudo[1]).sum())
    assert 'assignments' in learn.method.state_dict()  # checkpointed with the weights
    fresh = ssl_learner('sela', data, bs=50, device='cpu', knn_every=None, probe=False, progress='none', clusters=10)
    fresh.method.load_state_dict(learn.method.state_dict())  # what --resume does: the history comes back with the state
    assert fresh.method.cluster_history == history and fresh.method.cluster_history is not history
    # the module's own label step on the trained head agrees with the hand-made one
    logp = head_log_probabilities(learn.method.encoder, learn.method.head, data.train.images, data)
    torch.testing.assert_close(logp, watch.log_probabilities[-1], rtol=1e-4, atol=1e-4)


def test_without_equipartition_the_labels_are_the_heads_argmax(data):
    seed_everything(0)
    learn = ssl_learner('sela', data, bs=50, device='cpu', knn_every=None, probe=False, progress='none',
                        clusters=10, equipartition=False)
    method = learn.method
    logp = head_log_probabilities(method.encoder, method.head, data.train.images, data)
    assert torch.equal(method.label(data.train.images, data), logp.argmax(1))


def test_loss_is_cross_entropy_against_the_stored_labels(data):
    seed_everything(0)
    learn = ssl_learner('sela', data, bs=50, device='cpu', knn_every=None, probe=False, progress='none', clusters=10)
    method = learn.method
    method.assignments.copy_(torch.arange(len(data.train)) * 7 % 10)
    indices = torch.tensor([5, 17, 123])
    outputs = method(*method.make_views(data.train.images[indices]))
    expected = sum(torch.logsumexp(outputs['logits'][row], 0) - outputs['logits'][row, int(indices[row]) * 7 % 10]
                   for row in range(3)) / 3
    torch.testing.assert_close(method.loss(outputs, data.train.labels[indices], indices), expected)


@pytest.mark.parametrize('options, fragment', [
    (dict(clusters=201), 'between 2 and the number of training images \\(200\\)'), (dict(clusters=1), 'clusters=1'),
    (dict(epsilon=0), 'epsilon'), (dict(epsilon=-0.1), 'epsilon'), (dict(sinkhorn_iterations=0), 'sinkhorn_iterations'),
    (dict(scale=(0.0, 1.0)), 'scale'), (dict(scale=(0.5, 1.5)), 'scale')])
def test_impossible_options_raise_usage_error(data, options, fragment):
    with pytest.raises(UsageError, match=fragment) as error:
        ssl_learner('sela', data, bs=50, device='cpu', knn_every=None, probe=False, progress='none', **options)
    assert '\n' not in str(error.value)


@pytest.mark.parametrize('option', ['clusters=500', 'epsilon=0'])
def test_cli_bad_options_exit_2(tmp_path, monkeypatch, capsys, option):
    "200 training images cannot fill 500 classes, and ε = 1/λ must be positive: one line, status 2, nothing trained."
    monkeypatch.chdir(tmp_path)
    write_fashion_mnist(tmp_path, per_class_train=20)
    code = cli.main(['pretrain', 'sela', '--data', 'fashion_mnist', '--data-dir', str(tmp_path), '--device', 'cpu',
                     '--epochs', '1', '-o', option, '--out', str(tmp_path / 'out')])
    out, err = capsys.readouterr()
    assert code == 2 and 'Traceback' not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('sslcourse: error: ') and option.split('=')[0] in lines[0], err
    assert not (tmp_path / 'out' / 'checkpoint.pth').exists()
