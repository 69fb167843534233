"""Precision and the monitors' cost (issue 22): bf16 is chosen only where the device computes it natively, `embed`
honours a precision, and the kNN monitor votes with a fixed subset of the training split."""
import pytest
import torch
from fastai.callback.core import Callback

import sslcourse.core as core
from sslcourse.core import UsageError, fast_bf16, get_precision
from sslcourse.data import get_data
from sslcourse.evaluate import embed
from sslcourse.models import create_encoder
from sslcourse.train.learner import KNNMonitor, fit_ssl, ssl_learner

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def data():
    return get_data(limit=20)


def test_precision_names(monkeypatch):
    assert get_precision('fp32', 'cpu') == 'fp32' and get_precision('bf16', 'cpu') == 'bf16'
    with pytest.raises(UsageError, match="unknown precision 'fp16'; choose from: bf16, fp32"): get_precision('fp16', 'cpu')
    for native in (True, False):
        monkeypatch.setattr(core, 'fast_bf16', lambda device: native)
        assert get_precision(None, 'cpu') == ('bf16' if native else 'fp32')
    assert fast_bf16('meta') is False
    cpu = torch.cpu._is_avx512_bf16_supported() or getattr(torch.cpu, '_is_amx_tile_supported', lambda: False)()
    assert fast_bf16('cpu') == cpu  # the function imported before the monkeypatch


def test_embed_precision(data):
    torch.manual_seed(0)
    encoder = create_encoder('convnet', 1)
    images = data.train.images[:64]
    fp32, default = embed(encoder, images, data, precision='fp32'), embed(encoder, images, data)
    bf16 = embed(encoder, images, data, precision='bf16')
    assert torch.equal(fp32, default), 'on a CPU the default is fp32: final tables do not change with the hardware'
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32), 'bf16 really ran'
    torch.testing.assert_close(bf16, fp32, atol=0.1, rtol=0.05)  # bf16 keeps 8 bits of mantissa


def test_knn_monitor_votes_with_a_fixed_subset(data):
    monitored = data.with_validation(0.1, seed=0)
    everyone = KNNMonitor(monitored, bank=None).voters
    assert torch.equal(everyone, torch.arange(len(monitored.train)))
    some, again = KNNMonitor(monitored, bank=50).voters, KNNMonitor(monitored, bank=50).voters
    assert len(some) == 50 and torch.equal(some, again) and len(set(some.tolist())) == 50
    assert not torch.equal(some, everyone[:50]), 'a random subset, not the first images (which may share a class)'
    labelled = len(monitored.train)
    assert KNNMonitor(monitored, bank=None).k == 200 and KNNMonitor(monitored, bank=50).k == round(200 * 50 / labelled)
    monitored.train.labels[:10] = -1  # unlabeled images cannot vote
    assert not set(KNNMonitor(monitored, bank=None).voters.tolist()) & set(range(10))


def test_the_monitor_runs_in_the_learners_precision(data, monkeypatch):
    import sslcourse.train.learner as learner
    seen = []
    def spy(*args, **kwargs):
        seen.append(args[4] if len(args) > 4 else kwargs.get('precision'))
        return embed_all(*args, **kwargs)
    embed_all = learner.embed_all
    monkeypatch.setattr(learner, 'embed_all', spy)
    for precision in ('bf16', 'fp32'):
        seen.clear()
        learn = ssl_learner('simclr', data, bs=50, device='cpu', progress='none', precision=precision, probe=False)
        fit_ssl(learn, 1)
        assert seen and set(seen) == {precision}, seen
        assert len(learn.knn_monitor.history) == 1


class Crash(Callback):
    "Raises inside the forward pass's autocast, as an error or Ctrl-C would."
    order = 5  # before `BFloat16` (10) leaves autocast in after_pred
    def after_pred(self): raise RuntimeError('crash')


def test_autocast_does_not_outlive_a_fit_that_raises(data):
    learn = ssl_learner('simclr', data, bs=50, device='cpu', progress='none', knn_every=None, probe=False,
                        precision='bf16', cbs=[Crash()])
    with pytest.raises(RuntimeError, match='crash'): fit_ssl(learn, 1)
    assert not torch.is_autocast_enabled('cpu'), 'the rest of the session would silently compute in bf16'
