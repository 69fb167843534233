"""Barlow Twins (lesson 42): the loss is `barlow_twins_loss` on the method's projections, over every process's batch;
impossible options are one line and exit 2; a short fit lowers the loss."""
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist

import sslcourse.cli as cli
from sslcourse.core import UsageError, seed_everything
from sslcourse.data import get_data
from sslcourse.train.learner import ssl_learner, fit_ssl, get_method
from sslcourse.losses import barlow_twins_loss
from sslcourse.losses import cross_correlation
from sslcourse.models import create_encoder
from tests.processes import run_processes

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py

MEAN, STD = (0.286,), (0.353,)
WORLD_SIZE, PER_PROCESS = 2, 6


def make(**options):
    torch.manual_seed(0)
    return get_method('barlow_twins')(create_encoder('convnet', 1), 28, MEAN, STD, **options)


def random_views(n=8, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 28, 28, generator=generator) for _ in range(2)]


def test_loss_is_barlow_twins_loss_of_the_projections():
    method = make(lambd=0.02, projection_dim=32, hidden_dim=48)
    views = random_views()
    outputs = method(*views)
    z1, z2 = method.projector(method.encoder(torch.cat(views))).chunk(2)  # the same batch: same batch-norm statistics
    torch.testing.assert_close(method.loss(outputs), barlow_twins_loss(z1, z2, 0.02))
    assert outputs['z1'].shape == (8, 32) and outputs['features'].shape == (8, method.encoder.num_features)
    # the matrix the lesson draws is the loss's: Σ(1 − C_ii)² + λ Σ_{i≠j} C_ij², written as a loop over entries
    C = cross_correlation(z1.detach(), z2.detach())
    naive = sum((1 - C[i, j]) ** 2 if i == j else 0.02 * C[i, j] ** 2 for i in range(32) for j in range(32))
    torch.testing.assert_close(barlow_twins_loss(z1.detach(), z2.detach(), 0.02), naive, rtol=1e-4, atol=1e-4)


def test_projector_has_three_linear_layers_with_batch_norm_and_relu_between():
    method = make(projection_dim=40, hidden_dim=24)
    kinds = [type(m).__name__ for m in method.projector]
    assert kinds == ['Linear', 'BatchNorm1d', 'ReLU', 'Linear', 'BatchNorm1d', 'ReLU', 'Linear']
    linears = [m for m in method.projector if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(method.encoder.num_features, 24), (24, 24), (24, 40)]


@pytest.mark.parametrize('options, fragment', [
    (dict(lambd=-0.1), 'lambd must be at least 0'), (dict(projection_dim=0), 'projection_dim must be a positive integer'),
    (dict(hidden_dim=0), 'hidden_dim must be a positive integer')])
def test_impossible_options_raise_usage_error(options, fragment):
    with pytest.raises(UsageError, match=fragment) as error: make(**options)
    assert '\n' not in str(error.value)


def test_cli_impossible_option_exits_2(tmp_path, capsys):
    "The method's own check (λ < 0) reaches the command line as one line and status 2, before any training."
    code = cli.main(['pretrain', 'barlow_twins', '-o', 'lambd=-1', '--epochs', '1', '--device', 'cpu',
                     '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2 and 'Traceback' not in err
    assert len(lines) == 1 and lines[0].startswith('sslcourse: error: ') and 'lambd must be at least 0' in lines[0], err
    assert not (tmp_path / 'out' / 'checkpoint.pth').exists()


def test_short_fit_lowers_the_loss():
    data = get_data(limit=20)  # 200 training images
    seed_everything(0)
    learn = ssl_learner('barlow_twins', data, bs=40, device='cpu', knn_every=None, probe=False, progress='none',
                        projection_dim=64, hidden_dim=64)
    fit_ssl(learn, 3)
    losses = [float(v) for v in learn.recorder.losses]
    assert len(losses) == 15 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses


def _worker(rank: int, folder: str, init_method: str):
    "One process: its rows of the views, the method's loss (which gathers), backward, then DDP-style averaging."
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=init_method, rank=rank, world_size=WORLD_SIZE)
    try:
        fixed = torch.load(os.path.join(folder, 'inputs.pth'))
        method = make(projection_dim=16, hidden_dim=16).eval()  # running BN statistics: rows independent of the batch
        rows = slice(rank * PER_PROCESS, (rank + 1) * PER_PROCESS)
        outputs = method(fixed['view1'][rows], fixed['view2'][rows])
        loss = method.loss(outputs)
        loss.backward()
        grads = {name: p.grad.detach().clone() for name, p in method.named_parameters()}
        for grad in grads.values():  # what DistributedDataParallel does: average the gradients over processes
            dist.all_reduce(grad); grad /= WORLD_SIZE
        local = barlow_twins_loss(outputs['z1'].detach(), outputs['z2'].detach())  # C of this process's rows only
        torch.save(dict(loss=loss.detach(), grads=grads, local=local), os.path.join(folder, f'rank{rank}.pth'))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    "C and the batch statistics cover both processes' rows: loss and gradients match one process on all 12 rows."
    view1, view2 = random_views(WORLD_SIZE * PER_PROCESS, seed=3)
    torch.save(dict(view1=view1, view2=view2), tmp_path / 'inputs.pth')
    run_processes(_worker, WORLD_SIZE, tmp_path, args=((tmp_path / 'rendezvous').as_uri(),), timeout=120)
    method = make(projection_dim=16, hidden_dim=16).eval()
    expected = method.loss(method(view1, view2))
    expected.backward()
    for rank in range(WORLD_SIZE):
        result = torch.load(tmp_path / f'rank{rank}.pth')
        torch.testing.assert_close(result['loss'], expected.detach(), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(result['local'], expected.detach(), atol=1e-2)  # half a batch gives another C
        for name, p in method.named_parameters():
            torch.testing.assert_close(result['grads'][name], p.grad, atol=1e-5, rtol=1e-3, msg=lambda m: f'{name}: {m}')
