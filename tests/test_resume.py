"""Checkpoints: exact resumption on CPU, atomic writes, clear errors for bad checkpoints, and NaN handling.

Acceptance: "On CPU, an interrupted 2-epoch run resumed from its checkpoint ends with the same weights as an
uninterrupted one."
"""
import contextlib
from pathlib import Path

import pytest
import torch
from fastai.callback.core import Callback

from sslcourse.core import UsageError, seed_everything
from sslcourse.data import get_data
from sslcourse.train.learner import Checkpoint, TrainingDiverged, fit_ssl, save_checkpoint, ssl_learner

LR = 1e-3


pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


@pytest.fixture(scope='module')
def data():
    return get_data(limit=20)   # 200 training images: 6 batches of 32 per epoch


class InterruptAfterFirstEpoch(Callback):
    "Ctrl-C at the end of the first epoch, after `Checkpoint` (order 70) has written it."
    order = Checkpoint.order + 10
    def after_epoch(self):
        if self.epoch == 0: raise KeyboardInterrupt


def _learner(data, checkpoint, cbs=None, arch='convnet', **options):
    seed_everything(0)
    return ssl_learner('simclr', data, arch=arch, bs=32, device='cpu', checkpoint=checkpoint, knn_every=None,
                       progress='lines', cbs=cbs, **options)


def _assert_same(a, b, where='state'):
    "Equal nested dicts/lists of tensors and plain values, tensors compared with torch.equal."
    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape):
            pytest.fail(f'{where}: {a.dtype}{tuple(a.shape)} vs {getattr(b, "dtype", type(b))}', pytrace=False)
        if not torch.equal(a, b):
            gap = (a.double() - b.double()).abs().max().item() if a.is_floating_point() else 'n/a'
            pytest.fail(f'{where} differs (largest difference {gap})', pytrace=False)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f'{where}: keys differ'
        for key in a: _assert_same(a[key], b[key], f'{where}[{key!r}]')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f'{where}: lengths differ'
        for i, (x, y) in enumerate(zip(a, b)): _assert_same(x, y, f'{where}[{i}]')
    else:
        assert a == b, f'{where}: {a!r} != {b!r}'


def _trained_epochs(learn) -> list:
    "The epochs (1-based) that `learn` trained itself, from its `Throughput` callback (whose history a resumed run restores)."
    return [record['epoch'] for record in learn.throughput.history if record['epoch'] > learn.resumed_epochs]


def _no_temporaries(folder: Path):
    assert not list(folder.glob('*.tmp')), 'a temporary checkpoint file was left behind'


def _interrupt_and_resume(data, folder: Path, resume_with_path: bool, **options):
    "The uninterrupted learner, and the learner that was interrupted after epoch 1 and resumed."
    uninterrupted = fit_ssl(_learner(data, folder / 'full' / 'checkpoint.pth', **options), 2, lr=LR)
    assert _trained_epochs(uninterrupted) == [1, 2]

    path = folder / 'interrupted' / 'checkpoint.pth'
    with pytest.raises(KeyboardInterrupt):
        fit_ssl(_learner(data, path, cbs=[InterruptAfterFirstEpoch()], **options), 2, lr=LR)
    assert torch.load(path, weights_only=False)['epoch'] == 1
    _no_temporaries(path.parent)

    resumed = _learner(data, path, **options)  # a fresh process would build the learner the same way
    fit_ssl(resumed, 2, lr=LR, resume=path if resume_with_path else True)
    assert _trained_epochs(resumed) == [2], 'the resumed run should train the second epoch only'
    assert torch.load(path, weights_only=False)['epoch'] == 2
    _no_temporaries(path.parent)
    return uninterrupted, resumed


def _assert_same_run(uninterrupted, resumed):
    _assert_same(uninterrupted.model.state_dict(), resumed.model.state_dict(), 'model')
    _assert_same(uninterrupted.opt.state_dict(), resumed.opt.state_dict(), 'optimizer')
    assert uninterrupted.opt.state_dict()['state'], 'the optimizer should have state (AdamW moments)'


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(data, tmp_path):
    "The acceptance item, with the learner's defaults (which include the online linear probe)."
    uninterrupted, resumed = _interrupt_and_resume(data, tmp_path, resume_with_path=True)
    _assert_same_run(uninterrupted, resumed)


def test_resume_is_exact_without_the_online_probe(data, tmp_path):
    "The same, with probe=False and `resume=True` (the learner's own checkpoint); then resuming a finished run."
    uninterrupted, resumed = _interrupt_and_resume(data, tmp_path, resume_with_path=False, probe=False)
    _assert_same_run(uninterrupted, resumed)
    # the run is complete: resuming it again trains no more and loads the final weights
    finished = _learner(data, tmp_path / 'full' / 'checkpoint.pth', probe=False)
    fit_ssl(finished, 2, lr=LR, resume=tmp_path / 'full' / 'checkpoint.pth')
    assert _trained_epochs(finished) == []
    _assert_same(uninterrupted.model.state_dict(), finished.model.state_dict(), 'model')


def test_checkpoint_writes_are_atomic(data, tmp_path, monkeypatch):
    learn = _learner(data, None, probe=False)
    learn.create_opt()
    path = tmp_path / 'deep' / 'folder' / 'checkpoint.pth'
    save_checkpoint(learn, path, 3)
    _no_temporaries(path.parent)
    state = torch.load(path, weights_only=False)
    assert {'method', 'optimizer', 'epoch', 'random'} <= state.keys() and state['epoch'] == 3
    _assert_same(learn.model.state_dict(), state['method'], 'method')
    good = path.read_bytes()

    def crash_half_way(obj, f, *args, **kwargs):  # a write killed part of the way through
        Path(f).write_bytes(good[:len(good) // 2])
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', crash_half_way)
    with pytest.raises(OSError):
        save_checkpoint(learn, path, 4)
    assert path.read_bytes() == good, 'a failed write must leave the previous checkpoint whole'
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)['epoch'] == 3


def _assert_usage_error(learn, path, *fragments):
    before = path.read_bytes()
    with pytest.raises(UsageError) as error:
        fit_ssl(learn, 2, lr=LR, resume=path)
    message = str(error.value)
    assert '\n' not in message and str(path) in message, message
    for fragment in fragments: assert fragment in message, message
    assert path.read_bytes() == before, 'a bad checkpoint must be left as it was'


def test_corrupt_checkpoint_is_a_usage_error(data, tmp_path):
    path = tmp_path / 'checkpoint.pth'
    path.write_bytes(b'not a checkpoint \x00\xff' * 50)
    _assert_usage_error(_learner(data, path, probe=False), path, 'cannot read')


def test_truncated_checkpoint_is_a_usage_error(data, tmp_path):
    learn = _learner(data, None, probe=False); learn.create_opt()
    path = tmp_path / 'checkpoint.pth'
    save_checkpoint(learn, path, 1)
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    _assert_usage_error(_learner(data, path, probe=False), path, 'cannot read')


def test_checkpoint_of_another_architecture_is_a_usage_error(data, tmp_path):
    learn = _learner(data, None, probe=False); learn.create_opt()
    path = tmp_path / 'checkpoint.pth'
    save_checkpoint(learn, path, 1)
    other = _learner(data, path, probe=False, arch='resnet18')
    _assert_usage_error(other, path, 'another method or architecture')


def test_zero_epochs_is_a_usage_error(data):
    with pytest.raises(UsageError, match='at least 1'):
        fit_ssl(_learner(data, None, probe=False), 0)


class PoisonedLoss:
    "SimCLR's loss, times NaN once `poisoned` is set."
    def __init__(self): self.method, self.poisoned = None, False
    def __call__(self, outputs, *targets):
        loss = self.method.loss(outputs, *targets)
        return loss * float('nan') if self.poisoned else loss


class PoisonFromSecondEpoch(Callback):
    "Turns the loss to NaN from the second epoch; keeps the checkpoint's bytes as they were after epoch 1."
    order = Checkpoint.order + 5
    def __init__(self, loss, path): self.loss, self.path, self.after_first = loss, path, None
    def before_epoch(self): self.loss.poisoned = self.epoch >= 1
    def after_epoch(self):
        if self.epoch == 0: self.after_first = self.path.read_bytes()


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(data, tmp_path):
    path = tmp_path / 'run' / 'checkpoint.pth'
    loss = PoisonedLoss()
    watcher = PoisonFromSecondEpoch(loss, path)
    learn = _learner(data, path, cbs=[watcher], loss_func=loss)
    loss.method = learn.model
    with pytest.raises(TrainingDiverged) as error:
        fit_ssl(learn, 3, lr=LR)
    message = str(error.value)
    assert 'epoch 2' in message and str(path) in message, message
    assert learn.epoch == 1, 'training should stop in the epoch whose loss became NaN'
    assert all(torch.isfinite(p).all() for p in learn.model.parameters()), \
        'on a CPU the guard looks at every step and stops before a NaN loss reaches the weights'
    assert watcher.after_first is not None
    assert path.read_bytes() == watcher.after_first, 'the checkpoint of the last good epoch must stay unchanged'
    _no_temporaries(path.parent)
    state = torch.load(path, weights_only=False)
    assert state['epoch'] == 1
    assert all(torch.isfinite(v).all() for v in state['method'].values() if v.is_floating_point())
