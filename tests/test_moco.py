"""MoCo v1/v2 (nbs/35_moco.ipynb): the key encoder gets no gradients and follows the EMA exactly, keys enter the
queue in FIFO order with wrap-around, impossible options exit 2 with one line, and a tiny run trains."""
import pytest
import torch

import sslcourse.cli as cli
from sslcourse.core import UsageError
from sslcourse.data import get_data
from sslcourse.train.learner import fit_ssl, get_method, ssl_learner
from sslcourse.models import create_encoder

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py
MoCo = get_method('moco')


def tiny_moco(**options):
    torch.manual_seed(0)
    return MoCo(create_encoder('convnet', 1), size=28, mean=(0.5,), std=(0.25,), **options)


def views(n=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=generator), torch.randn(n, 1, 28, 28, generator=generator)


def test_key_encoder_gets_no_gradients_and_follows_the_ema():
    method = tiny_moco(momentum=0.9, queue_size=16)
    optimiser = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    assert all(not p.requires_grad for p in method.key_encoder.parameters())
    online = list(method.encoder.parameters()) + list(method.head.parameters())
    key = list(method.key_encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(key, online))  # the key encoder starts as a copy
    before = [p.detach().clone() for p in key]
    method.loss(method(*views()), None).backward()
    assert all(p.grad is None for p in key), 'the key encoder received a gradient'
    assert all(p.grad is not None for p in method.head.parameters())
    optimiser.step()
    method.on_step(0.5)
    for old, new, query in zip(before, key, online):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * query.detach(), rtol=1e-6, atol=1e-7)
    for key_buffer, online_buffer in zip(method.key_encoder[0].buffers(), method.encoder.buffers()):
        assert torch.equal(key_buffer, online_buffer)  # BN running statistics are copied


def test_keys_enter_the_queue_fifo_with_wraparound():
    method = tiny_moco(queue_size=6)
    initial = method.queue.items.clone()
    method(*views(4, 1)); first = method.pending.clone(); method.on_step(0.1)
    assert torch.equal(method.queue.items[:4], first) and torch.equal(method.queue.items[4:], initial[4:])
    assert int(method.queue.pointer) == 4
    method(*views(4, 2)); second = method.pending.clone(); method.on_step(0.2)
    assert torch.equal(method.queue.items[4:], second[:2])   # the tail fills first,
    assert torch.equal(method.queue.items[:2], second[2:])   # then it wraps around over the oldest keys
    assert torch.equal(method.queue.items[2:4], first[2:])
    assert int(method.queue.pointer) == 2


def test_shuffled_batch_norm_keeps_rows_in_order():
    method = tiny_moco(shuffle_groups=2).eval()   # eval: BN uses running statistics, so shuffling must change nothing
    x = views(8)[0]
    plain = method.key_encoder[1](method.key_encoder[0](x))
    torch.testing.assert_close(method.keys(x), plain)
    method.train()
    assert method.keys(x).shape == plain.shape


def test_impossible_options_raise():
    for options in (dict(momentum=1.0), dict(momentum=-0.1), dict(queue_size=0), dict(temperature=0.0)):
        with pytest.raises(UsageError): tiny_moco(**options)


def one_line_error(capsys, argv):
    status = cli.main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    return status, lines


def test_cli_queue_smaller_than_batch_exits_2(tmp_path, capsys):
    status, lines = one_line_error(capsys, ['pretrain', 'moco', '--bs', '8192', '--epochs', '1', '--device', 'cpu',
                                            '--out', str(tmp_path / 'run')])
    assert status == 2 and len(lines) == 1 and 'queue' in lines[0] and '8192' in lines[0]


@pytest.mark.parametrize('momentum', [1.0, -0.5])
def test_cli_momentum_outside_unit_interval_exits_2(tmp_path, capsys, monkeypatch, momentum):
    monkeypatch.setattr(MoCo, 'momentum', momentum)  # the CLI has no method flags: change the class default
    status, lines = one_line_error(capsys, ['pretrain', 'mocov2', '--epochs', '1', '--device', 'cpu',
                                            '--out', str(tmp_path / 'run')])
    assert status == 2 and len(lines) == 1 and 'momentum' in lines[0]


@pytest.mark.parametrize('name', ['moco', 'mocov2'])
def test_tiny_run_trains(name):
    data = get_data(limit=20)
    torch.manual_seed(0)
    learn = ssl_learner(name, data, bs=32, device='cpu', knn_every=None, probe=False, progress='none', queue_size=64)
    key_before = [p.clone() for p in learn.method.key_encoder.parameters()]
    fit_ssl(learn, 1)
    losses = [float(v) for v in learn.recorder.losses]
    steps = len(learn.dls.train)
    assert len(losses) == steps and all(torch.isfinite(torch.tensor(losses)))
    assert int(learn.method.queue.pointer) == steps * 32 % 64
    assert any(not torch.equal(a, b) for a, b in zip(key_before, learn.method.key_encoder.parameters()))


def _two_process_step(rank: int, folder: str, port: int):
    "One MoCo forward + on_step per gloo process; each saves its keys and its queue."
    import os
    os.environ.update(WORLD_SIZE='2', RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist
    dist.init_process_group('gloo', rank=rank, world_size=2)
    method = tiny_moco(queue_size=10)               # the same seed: identical weights and initial queue on both
    method(*views(4, seed=10 + rank))               # each process its own images
    keys = method.pending.clone(); method.on_step(0.5)
    torch.save(dict(keys=keys, queue=method.queue.items, pointer=int(method.queue.pointer)), f'{folder}/rank{rank}.pth')
    dist.destroy_process_group()


def test_keys_from_two_processes_enter_the_queue_in_rank_order(tmp_path):
    from tests.processes import free_port, run_processes
    run_processes(_two_process_step, 2, tmp_path, args=(free_port(),), timeout=120)
    first, second = (torch.load(tmp_path / f'rank{rank}.pth') for rank in range(2))
    assert torch.equal(first['queue'], second['queue']) and first['pointer'] == second['pointer'] == 8
    assert torch.equal(first['queue'][:4], first['keys']) and torch.equal(first['queue'][4:8], second['keys'])
