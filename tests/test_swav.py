"""SwAV (lesson 46): prototypes stay on the unit sphere, are frozen in the first epoch, the queue fills FIFO and enters
Sinkhorn only, the loss is `swav_loss` on the method's own scores, and impossible options exit 2 with one line."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sslcourse.cli as cli
import sslcourse.losses as losses
from sslcourse.core import UsageError, seed_everything
from sslcourse.data import get_data
from sslcourse.train.learner import ssl_learner, fit_ssl, get_method
from sslcourse.models import create_encoder

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


@pytest.fixture(scope='module')
def data():
    return get_data(limit=20)  # 200 training images


def make(data, **options):
    seed_everything(0)
    return get_method('swav')(create_encoder('convnet', 1), 28, data.mean, data.std, **{'local_views': 2, **options})


def step(method, images, optimizer):
    "One training step as the learner runs it: views, forward, loss, backward, hooks, optimiser step."
    optimizer.zero_grad()
    outputs = method(*method.make_views(images))
    loss = method.loss(outputs)
    loss.backward()
    method.before_optimizer_step(0.0)
    optimizer.step()
    method.on_step(0.0)
    return outputs, loss


def test_loss_is_swav_loss_on_its_own_scores(data):
    method = make(data)
    outputs = method(*method.make_views(data.train.images[:16]))
    scores = outputs['scores']
    assert len(scores) == 4 and all(s.shape == (16, 30) for s in scores)
    # the scores are cosines: normalised embeddings times unit prototypes
    z = outputs['embeddings']  # the two large crops' projections, normalised (2 × 16 rows)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(32))
    torch.testing.assert_close(scores[1], z[16:] @ method.prototypes.weight.T)
    torch.testing.assert_close(method.loss(outputs), losses.swav_loss(scores[:2], scores[2:], 0.1, 0.05, 3))


def test_prototypes_unit_norm_frozen_in_first_epoch_then_updated(data):
    method = make(data)
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(30))
    optimizer = torch.optim.AdamW(method.parameters(), lr=0.01)
    before, projector = method.prototypes.weight.detach().clone(), method.projector[0].weight.detach().clone()
    method.epoch = 0
    step(method, data.train.images[:16], optimizer)
    torch.testing.assert_close(method.prototypes.weight, before)  # frozen: no gradient, no step, no decay
    assert not torch.equal(method.projector[0].weight, projector)       # while the rest trains
    method.epoch = 1
    step(method, data.train.images[16:32], optimizer)
    assert not torch.allclose(method.prototypes.weight, before)
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(30))  # renormalised after the step


def test_queue_fills_fifo_and_its_scores_enter_sinkhorn_only(data, monkeypatch):
    method = make(data, queue_size=24, queue_start=1)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.0)  # keep the weights: the queue is what we watch
    method.epoch = 1
    first, _ = step(method, data.train.images[:16], optimizer)
    z1 = first['embeddings'][:16].detach()
    torch.testing.assert_close(method.queues[0].items[:16], z1)
    assert int(method.queues[0].pointer) == 16 and method.queued == 16
    assert method.queue_scores() is None  # not yet full: the queue is not used
    second, _ = step(method, data.train.images[16:32], optimizer)
    z2 = second['embeddings'][:16].detach()
    torch.testing.assert_close(method.queues[0].items[16:], z2[:8])  # the tail fills first,
    torch.testing.assert_close(method.queues[0].items[:8], z2[8:])   # then the oldest rows are overwritten
    torch.testing.assert_close(method.queues[1].items[16:], second['embeddings'][16:24].detach())  # crop 2's own queue
    # full and past queue_start: the queue's scores go to Sinkhorn, and nowhere else
    seen = []
    real = losses.sinkhorn
    def spy(scores, *args): seen.append(scores.shape); return real(scores, *args)
    monkeypatch.setattr(losses, 'sinkhorn', spy)
    outputs = method(*method.make_views(data.train.images[32:48]))
    queued = method.queue_scores()
    torch.testing.assert_close(queued[0], method.prototypes(method.queues[0].items))
    loss = method.loss(outputs)
    assert seen == [(16 + 24, 30), (16 + 24, 30)]
    expected = losses.swav_loss(outputs['scores'][:2], outputs['scores'][2:], 0.1, 0.05, 3, queue_scores=queued)
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, losses.swav_loss(outputs['scores'][:2], outputs['scores'][2:], 0.1, 0.05, 3))
    method.epoch = 0
    assert method.queue_scores() is None  # before queue_start: never used


@pytest.mark.parametrize('options, fragment', [
    (dict(epsilon=0.0), 'epsilon'), (dict(temperature=-0.1), 'temperature'), (dict(prototypes=1), 'prototypes'),
    (dict(global_scale=(0.3, 1.5)), 'global_scale'), (dict(local_scale=(0.0, 0.3)), 'local_scale')])
def test_impossible_options_raise_one_line(data, options, fragment):
    with pytest.raises(UsageError, match=fragment) as error: make(data, **options)
    assert '\n' not in str(error.value)


def test_queue_smaller_than_batch_raises(data):
    method = make(data, queue_size=8)
    with pytest.raises(UsageError, match='queue'): method(*method.make_views(data.train.images[:16]))


@pytest.mark.parametrize('option, fragment', [('epsilon=0', 'epsilon'), ('prototypes=1', 'prototypes'),
                                              ('queue_size=32', 'queue'), ('local_scale=(0.1,1.2)', 'local_scale')])
def test_cli_bad_options_exit_2(tmp_path, capsys, option, fragment):
    status = cli.main(['pretrain', 'swav', '--limit', '20', '--epochs', '1', '--bs', '64', '--device', 'cpu', '-o', option,
                       '--out', str(tmp_path / 'run')])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and fragment in lines[0] and 'Traceback' not in err, err


def test_tiny_run_trains(data):
    seed_everything(0)
    learn = ssl_learner('swav', data, bs=50, device='cpu', knn_every=None, probe=False, progress='none', local_views=2,
                        queue_size=100, queue_start=1)
    fit_ssl(learn, 2)
    losses_ = [float(v) for v in learn.recorder.losses]
    assert len(losses_) == 8 and all(np.isfinite(losses_))
    assert learn.method.epoch == 1 and learn.method.queued == 400  # 2 epochs of 200 images
