"""Spine 2: what a method can declare (indices, number of images, epoch order, parameter groups, a hook before the
optimiser step), MemoryBank against a loop, optimisers and schedules by name, and the learner's defects 4, 5, 6, 9, 10."""
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fastai.callback.core import Callback

from sslcourse.core import UsageError, seed_everything
from sslcourse.data import get_data
from sslcourse.train.learner import (Method, MemoryBank, Queue, fit_ssl, optimizer_groups, reset_head_, ssl_learner,
                               TrainingDiverged, SCHEDULES, BFloat16)
from sslcourse.augment import simclr_views
from sslcourse.losses import info_nce, nt_xent
from sslcourse.models import create_encoder, mlp

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


@pytest.fixture(scope='module')
def data():
    return get_data(limit=30)   # 300 training images, 10 classes


class ToyBank(Method):
    "A tiny NPID: each image's embedding should match its own memory-bank entry against random bank entries."
    name = 'toy_bank'
    needs_indices = needs_num_images = True

    def __init__(self, encoder, size, mean, std, num_images, dim=32, negatives=128, temperature=0.1):
        super().__init__(encoder, simclr_views(size, mean, std, scale=(0.5, 1.0))[:1])
        self.projector = mlp(encoder.num_features, 64, dim)
        self.bank = MemoryBank(num_images, dim, momentum=0.5)
        self.negatives, self.temperature, self.visited = negatives, temperature, []

    def forward(self, view):
        features = self.encoder(view)
        return dict(features=features, z=F.normalize(self.projector(features), dim=1))

    def loss(self, outputs, labels, indices):
        self.pending = (indices, outputs['z'].detach())
        self.visited.append(indices.clone())
        return info_nce(outputs['z'], self.bank[indices], self.bank.negatives(self.negatives), self.temperature)

    def on_step(self, progress): self.bank.update(*self.pending)


def _toy_bank_learner(data, **options):
    seed_everything(0)
    return ssl_learner('toy_bank', data, bs=50, device='cpu', progress='none', **options)


@pytest.fixture(autouse=True, scope='module')
def _register_toy():
    from sslcourse.train.learner import METHODS
    METHODS.register('toy_bank')(ToyBank)
    yield
    METHODS._items.pop('toy_bank', None)


def test_a_memory_bank_method_gets_indices_and_its_size_and_learns(data):
    learn = _toy_bank_learner(data, knn_every=2)
    assert len(learn.method.bank) == len(data.train)             # sized at construction, before any checkpoint
    before = learn.method.bank.items.clone()
    fit_ssl(learn, 6, lr=3e-3)
    seen = torch.cat(learn.method.visited)
    assert len(seen) == 6 * 300 and len(seen[:300].unique()) == 300   # each image once per epoch
    changed = (learn.method.bank.items != before).any(1)
    assert changed.all(), 'every image visited should have moved its bank entry'
    # the loss first rises while the bank fills with the (still similar) embeddings, then falls as they spread out
    losses = [float(v) for v in learn.recorder.losses]
    assert losses[-1] < max(losses) - 2 and losses[-1] < losses[0] - 1, losses[::6]
    # instance discrimination: most images' own bank entry is now their nearest one (chance: 1 in 300)
    method = learn.method.eval()
    with torch.no_grad(): z = method(data.normalize(data.train.images))['z']
    own = ((z @ method.bank.items.T).argmax(1) == torch.arange(len(z))).float().mean().item()
    assert own > 0.05, own


def test_indices_are_the_images_positions(data):
    learn = _toy_bank_learner(data, knn_every=None, probe=False)
    images, labels, indices = next(iter(learn.dls.train))
    assert torch.equal(images, data.train.images[indices]) and torch.equal(labels, data.train.labels[indices])


def test_memory_bank_update_and_negatives_against_a_loop():
    torch.manual_seed(0)
    bank = MemoryBank(10, 4, momentum=0.3)
    expected = bank.items.clone()
    indices, rows = torch.tensor([7, 2, 5]), torch.randn(3, 4)
    for i, row in zip(indices.tolist(), rows):
        mixed = 0.3 * expected[i] + 0.7 * row
        expected[i] = mixed / mixed.norm()
    bank.update(indices, rows)
    torch.testing.assert_close(bank.items, expected)
    generator = torch.Generator().manual_seed(3)
    drawn = bank.negatives(50, queries=2, generator=generator)
    assert drawn.shape == (2, 50, 4)
    assert all(any(torch.equal(row, item) for item in bank.items) for row in drawn.reshape(-1, 4))
    state = bank.state_dict()
    assert 'items' in state and state['items'].shape == (10, 4)  # a buffer: checkpointed, moves with .to()


def test_queue_push_of_more_rows_than_it_holds_keeps_the_last_ones():  # defect 10
    queue = Queue(4, 1)
    writes = []
    def spy(dim, index, source, original=queue.items.index_copy_):   # which slots does a push write?
        writes.append(index.clone()); return original(dim, index, source)
    queue.items.index_copy_ = spy
    queue.push(torch.arange(3.0).view(-1, 1))                        # pointer now 3
    queue.push(torch.arange(10.0, 20.0).view(-1, 1))                 # 10 rows into 4 slots
    one_by_one = Queue(4, 1); one_by_one.push(torch.arange(3.0).view(-1, 1))
    for value in range(10, 20): one_by_one.push(torch.tensor([[float(value)]]))
    assert torch.equal(queue.items, one_by_one.items) and int(queue.pointer) == int(one_by_one.pointer)
    # no slot is written twice in one push: which duplicate wins is undefined on a GPU
    assert all(len(index.unique()) == len(index) for index in writes) and len(writes[-1]) == 4
    assert sorted(queue.items.flatten().tolist()) == [16, 17, 18, 19]


class Sampled(ToyBank):
    name = 'toy_bank'
    def epoch_order(self, count, generator):  # only the first 100 images, twice each
        return torch.randperm(100, generator=generator, device='cpu').repeat(2)


def test_a_method_sets_the_order_of_the_epoch(data):
    seed_everything(0)
    learn = ssl_learner(Sampled(create_encoder('convnet', 1), 28, data.mean, data.std, num_images=len(data.train)),
                        data, bs=50, device='cpu', progress='none', knn_every=None, probe=False)
    fit_ssl(learn, 1, lr=1e-3)
    seen = torch.cat(learn.method.visited)
    assert len(seen) == 200 and seen.max() < 100 and torch.bincount(seen).tolist() == [2] * 100


def test_weight_decay_skips_norms_and_biases(data):
    learn = ssl_learner('simclr', data, bs=50, device='cpu', progress='none', knn_every=None)
    learn.create_opt()
    groups = learn.opt.opt.param_groups
    decayed = {id(p) for g in groups if g['weight_decay'] > 0 for p in g['params']}
    for name, parameter in learn.method.named_parameters():
        assert (id(parameter) in decayed) == (parameter.ndim > 1), name
    assert any(isinstance(m, nn.BatchNorm2d) for m in learn.method.modules())
    assert sum(len(g['params']) for g in groups) == len(list(learn.method.parameters()))


class FixedPredictor(ToyBank):
    "SimSiam-style: the projector at a fixed learning rate, the encoder's layers at half the scheduled rate."
    def parameter_groups(self):
        return [dict(params=list(self.encoder.parameters()), lr_scale=0.5, weight_decay=0.0),
                dict(params=list(self.projector.parameters()), fixed_lr=True, weight_decay=0.0)]


class RecordRates(Callback):
    order = 61  # after fastai's ParamScheduler (60) set them
    def before_fit(self): self.rates = []
    def before_batch(self): self.rates.append([g['lr'] for g in self.learn.opt.opt.param_groups])


@pytest.mark.parametrize('schedule', ['one_cycle', 'warmup_cosine'])
def test_parameter_groups_with_a_fixed_and_a_scaled_rate(data, schedule):
    seed_everything(0)
    method = FixedPredictor(create_encoder('convnet', 1), 28, data.mean, data.std, num_images=len(data.train))
    record = RecordRates()
    learn = ssl_learner(method, data, bs=50, device='cpu', progress='none', knn_every=None, probe=False,
                        schedule=schedule, cbs=[record])
    fit_ssl(learn, 2, lr=0.01)
    rates = np.array(record.rates)
    assert np.allclose(rates[:, 1], 0.01), 'the fixed group stays at the peak rate'
    assert rates[:, 0].max() == pytest.approx(0.005, rel=0.05) and rates[-1, 0] < 1e-3
    if schedule == 'warmup_cosine': assert rates[0, 0] < 0.005 * 0.2 and np.all(np.diff(rates[2:, 0]) <= 1e-12)


def test_lars_and_warmup_cosine_by_name_and_unknown_names(data):
    from timm.optim import Lars
    learn = ssl_learner('simclr', data, bs=50, device='cpu', progress='none', knn_every=None, optimizer='lars',
                        schedule='warmup_cosine')
    fit_ssl(learn, 1, lr=0.1)
    assert isinstance(learn.opt.opt, Lars)
    assert set(SCHEDULES.names()) >= {'one_cycle', 'warmup_cosine'}
    with pytest.raises(UsageError, match='adamw, lars, sgd'): ssl_learner('simclr', data, device='cpu', optimizer='adam')
    with pytest.raises(UsageError, match='one_cycle, warmup_cosine'): ssl_learner('simclr', data, device='cpu', schedule='cos')


class FrozenProjector(ToyBank):
    "SwAV freezes its prototypes at first, DINO cancels its last layer's gradient: a hook before the step."
    def before_optimizer_step(self, progress):
        for parameter in self.projector.parameters(): parameter.grad = None


def test_the_hook_before_the_optimiser_step(data):
    seed_everything(0)
    method = FrozenProjector(create_encoder('convnet', 1), 28, data.mean, data.std, num_images=len(data.train))
    before = [p.detach().clone() for p in method.projector.parameters()]
    encoder_before = [p.detach().clone() for p in method.encoder.parameters()]
    learn = ssl_learner(method, data, bs=50, device='cpu', progress='none', knn_every=None, probe=False, weight_decay=0.0)
    fit_ssl(learn, 1, lr=1e-2)
    assert all(torch.equal(a, b) for a, b in zip(before, method.projector.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(encoder_before, method.encoder.parameters()))


def test_reset_head_drops_that_heads_optimiser_state(data):
    learn = _toy_bank_learner(data, knn_every=None, probe=False)
    fit_ssl(learn, 1, lr=1e-3)
    state = learn.opt.opt.state
    assert all(p in state for p in learn.method.projector.parameters())
    old = learn.method.projector[0].weight.detach().clone()
    reset_head_(learn, learn.method.projector)
    assert not any(p in state for p in learn.method.projector.parameters())
    assert all(p in state for p in learn.method.encoder.parameters() if p.requires_grad)
    assert not torch.equal(old, learn.method.projector[0].weight)


class Steps(Callback):
    def before_fit(self): self.count = 0
    def after_step(self): self.count += 1


def test_nan_guard_catches_a_non_finite_gradient_before_the_step(data, tmp_path):  # defect 4
    "A finite loss with an infinite gradient (sqrt at 0) must stop training before the step, and no checkpoint keeps it."
    seed_everything(0)
    learn = ssl_learner('simclr', data, bs=50, device='cpu', progress='none', knn_every=None,
                        checkpoint=tmp_path / 'checkpoint.pth', cbs=[steps := Steps()])
    fit_ssl(learn, 1, lr=1e-3)
    good = {k: v.clone() for k, v in learn.method.state_dict().items()}
    original = learn.loss_func
    calls = []
    def poisoned(outputs, *targets):
        calls.append(1)
        loss = original(outputs, *targets)
        if len(calls) == 3: loss = loss + (outputs['z1'][0, 0] * 0).sqrt()  # adds 0, but its gradient is inf
        return loss
    learn.loss_func = poisoned
    with pytest.raises(TrainingDiverged, match='last good checkpoint'): fit_ssl(learn, 3, lr=1e-3, resume=True)
    assert steps.count == 2, 'on a CPU the guard looks at every step, before the optimiser step'
    assert all(torch.isfinite(p).all() for p in learn.method.parameters())
    saved = torch.load(tmp_path / 'checkpoint.pth', weights_only=False)
    assert saved['epoch'] == 1 and all(torch.equal(saved['method'][k], v) for k, v in good.items())


class Crops(ToyBank):
    "One view that holds two crops of every image (as a multi-crop view may), and slow epoch-start work."
    def make_views(self, images):
        view, = super().make_views(images)
        return [torch.cat([view, view.flip(-1)])]
    def forward(self, view):
        out = super().forward(view); n = len(out['z']) // 2
        return dict(features=out['features'][:n], z=out['z'][:n])
    def on_epoch_start(self, learn): time.sleep(0.5)


def test_throughput_counts_images_not_views_and_includes_the_epoch_start(data):  # defect 5
    seed_everything(0)
    method = Crops(create_encoder('convnet', 1), 28, data.mean, data.std, num_images=len(data.train))
    learn = ssl_learner(method, data, bs=50, device='cpu', progress='none', knn_every=None, probe=False)
    fit_ssl(learn, 1, lr=1e-3)
    epoch, = learn.throughput.history
    assert epoch['images'] == len(data.train) // 50 * 50
    assert epoch['seconds'] >= 0.5


def test_resume_in_a_new_process_keeps_every_history(data, tmp_path):  # defect 6
    path = tmp_path / 'checkpoint.pth'
    def fresh(cbs=None):
        seed_everything(0)
        return ssl_learner('simclr', data, bs=50, device='cpu', progress='none', knn_every=1, checkpoint=path, cbs=cbs)
    straight = fit_ssl(fresh(), 2, lr=1e-3)
    path.unlink()
    class Stop(Callback):
        order = 90
        def after_epoch(self): raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): fit_ssl(fresh(cbs=[Stop()]), 2, lr=1e-3)
    resumed = fit_ssl(fresh(), 2, lr=1e-3, resume=path)          # a new Learner: as after a restart
    assert resumed.knn_monitor.history == straight.knn_monitor.history
    assert resumed.online_probe.history == straight.online_probe.history
    assert [e['epoch'] for e in resumed.throughput.history] == [1, 2]
    assert len(resumed.recorder.losses) == len(straight.recorder.losses)
    torch.testing.assert_close(torch.tensor([float(v) for v in resumed.recorder.losses]),
                               torch.tensor([float(v) for v in straight.recorder.losses]))


class DtypeProbe(Callback):
    "The dtype the encoder computes in, and what the loss receives: dtype and whether autocast is still on."
    order = 20  # after `BFloat16` (10) left autocast
    def before_fit(self):
        self.learn.method.encoder.register_forward_hook(lambda module, inputs, output: setattr(self, 'forward_dtype', output.dtype))
    def after_pred(self): self.loss_dtype, self.autocast_at_loss = self.learn.pred['z1'].dtype, torch.is_autocast_enabled('cpu')


def test_bf16_on_a_cpu_really_autocasts_and_the_loss_runs_in_float32(data):  # defect 9
    probe = DtypeProbe()
    learn = ssl_learner('simclr', data, bs=50, device='cpu', progress='none', knn_every=None, precision='bf16', cbs=[probe])
    fit_ssl(learn, 1, lr=1e-3)
    assert (learn.precision, probe.forward_dtype, probe.loss_dtype, probe.autocast_at_loss) == \
        ('bf16', torch.bfloat16, torch.float32, False)
    probe32 = DtypeProbe()
    learn = ssl_learner('simclr', data, bs=50, device='cpu', progress='none', knn_every=None, precision='fp32', cbs=[probe32])
    fit_ssl(learn, 1)
    assert (learn.precision, probe32.forward_dtype, probe32.loss_dtype) == ('fp32', torch.float32, torch.float32)


@pytest.mark.parametrize('native', [True, False])
def test_the_default_precision_is_bf16_only_where_the_device_computes_it_natively(data, monkeypatch, native):
    import sslcourse.core as core
    monkeypatch.setattr(core, 'fast_bf16', lambda device: native)
    learn = ssl_learner('simclr', data, bs=50, device='cpu', progress='none', knn_every=None, probe=False)
    assert learn.precision == ('bf16' if native else 'fp32')
    assert any(isinstance(cb, BFloat16) for cb in learn.cbs) == native
    with pytest.raises(UsageError, match="unknown precision 'half'; choose from: bf16, fp32"):
        ssl_learner('simclr', data, bs=50, device='cpu', progress='none', knn_every=None, precision='half')


def test_channels_last_is_the_default_on_the_cpu_too(data):
    "oneDNN's convolutions gain from channels_last as cuDNN's do (benchmarks/memory_format.py); off by request."
    from sslcourse.train.learner import ChannelsLast
    is_channels_last = lambda learn: all(p.is_contiguous(memory_format=torch.channels_last)
                                         for p in learn.method.parameters() if p.dim() == 4)
    learn = ssl_learner('simclr', data, bs=50, device='cpu', progress='none', knn_every=None, probe=False)
    assert is_channels_last(learn) and any(isinstance(cb, ChannelsLast) for cb in learn.cbs)
    fit_ssl(learn, 1)  # trains in that layout
    learn = ssl_learner('simclr', data, bs=50, device='cpu', progress='none', knn_every=None, probe=False,
                        channels_last=False)
    assert not is_channels_last(learn) and not any(isinstance(cb, ChannelsLast) for cb in learn.cbs)


def test_global_batch_must_split_over_processes(data, monkeypatch):
    import sslcourse.train.learner as learner
    monkeypatch.setattr(learner, 'world_size', lambda: 3)
    with pytest.raises(UsageError, match='multiple of 3'): ssl_learner('simclr', data, bs=64, device='cpu')


def test_the_knn_monitor_never_looks_at_the_test_split(data):  # defect 11
    learn = ssl_learner('simclr', data, bs=50, device='cpu', progress='none')
    monitored = learn.knn_monitor.data
    flat = lambda images: {bytes(image.numpy()) for image in images}
    train, test = flat(data.train.images), flat(data.test.images)
    assert flat(monitored.test.images) <= train and not flat(monitored.test.images) & test
    assert not flat(monitored.train.images) & flat(monitored.test.images)
    assert len(monitored.test) == len(data.train) // 10


def test_a_checkpoint_with_other_optimiser_groups_is_one_line(data, tmp_path):
    "An older checkpoint (one parameter group, before norms and biases lost their weight decay) is a UsageError."
    path = tmp_path / 'checkpoint.pth'
    learn = ssl_learner('simclr', data, bs=50, device='cpu', progress='none', knn_every=None, checkpoint=path)
    fit_ssl(learn, 1, lr=1e-3)
    state = torch.load(path, weights_only=False)
    groups = state['optimizer']['param_groups']
    state['optimizer']['param_groups'] = [dict(groups[0], params=[i for g in groups for i in g['params']])]
    torch.save(state, path)
    fresh = ssl_learner('simclr', data, bs=50, device='cpu', progress='none', knn_every=None, checkpoint=path)
    with pytest.raises(UsageError, match='other optimiser settings') as error: fit_ssl(fresh, 2, resume=path)
    assert '\n' not in str(error.value)


def test_get_device_picks_the_local_rank_gpu_under_torchrun(monkeypatch):
    from sslcourse.core import get_device
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setenv('LOCAL_RANK', '3')
    assert get_device('cuda') == torch.device('cuda', 3) and get_device(None) == torch.device('cuda', 3)
    assert get_device('cuda:1') == torch.device('cuda', 1)       # an explicit index wins
    monkeypatch.delenv('LOCAL_RANK')
    assert get_device('cuda') == torch.device('cuda', 0)
