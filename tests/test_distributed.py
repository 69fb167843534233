"""Acceptance: a 2-process gloo run of SimCLR equals the 1-process run on the concatenated batch, in loss and
gradients. That needs `gather_with_grad`: every process sees every process's embeddings as negatives, and gradients
flow back through the gather to the process that computed each embedding.

Batch norm: the method runs in `eval()` mode here, so batch norm normalises with its running statistics and each
image's embedding does not depend on which other images share its batch. In training mode each process would
normalise with the statistics of its own half-batch (unless the model is converted to SyncBatchNorm), so the two
runs would differ for a reason that has nothing to do with gathering embeddings; that is a separate matter.
"""
import os

import pytest
import torch
import torch.distributed as dist

from sslcourse.train.learner import gather_with_grad
from sslcourse.losses import nt_xent
from sslcourse.methods.contrastive.simclr import SimCLR
from sslcourse.models import create_encoder
from tests.processes import run_processes

WORLD_SIZE, PER_PROCESS, SEED, TEMPERATURE = 2, 6, 0, 0.2
MEAN, STD = (0.286,), (0.353,)
JOIN_TIMEOUT_S = 120


def _make_method() -> SimCLR:
    torch.manual_seed(SEED)
    method = SimCLR(create_encoder('convnet', 1), 28, MEAN, STD, temperature=TEMPERATURE)
    return method.eval()  # running BN statistics: see the module docstring


def _loss_and_grads(method, view1, view2):
    method.zero_grad(set_to_none=True)
    outputs = method(view1, view2)
    loss = method.loss(outputs)
    loss.backward()
    return loss.detach(), {name: p.grad.detach().clone() for name, p in method.named_parameters()}, outputs


def _worker(rank: int, folder: str, init_method: str):
    "One process: its rows of the views, the method's loss (which gathers), backward, then DDP-style grad averaging."
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=init_method, rank=rank, world_size=WORLD_SIZE)
    try:
        fixed = torch.load(os.path.join(folder, 'inputs.pth'))
        method = _make_method()
        initial = {name: value for name, value in method.state_dict().items()}
        same_init = all(torch.equal(initial[name], value) for name, value in fixed['state'].items())
        rows = slice(rank * PER_PROCESS, (rank + 1) * PER_PROCESS)
        loss, grads, outputs = _loss_and_grads(method, fixed['view1'][rows], fixed['view2'][rows])
        for grad in grads.values():  # what DistributedDataParallel does: average the gradients over processes
            dist.all_reduce(grad)
            grad /= WORLD_SIZE
        local_loss = nt_xent(outputs['z1'].detach(), outputs['z2'].detach(), TEMPERATURE)  # without the gather
        torch.save(dict(loss=loss, grads=grads, local_loss=local_loss, same_init=same_init),
                   os.path.join(folder, f'rank{rank}.pth'))
    finally:
        dist.destroy_process_group()


def test_two_process_simclr_equals_one_process_on_the_concatenated_batch(tmp_path):
    generator = torch.Generator().manual_seed(1)
    view1 = torch.randn(WORLD_SIZE * PER_PROCESS, 1, 28, 28, generator=generator)
    view2 = torch.randn(WORLD_SIZE * PER_PROCESS, 1, 28, 28, generator=generator)
    method = _make_method()
    torch.save(dict(view1=view1, view2=view2, state=method.state_dict()), tmp_path / 'inputs.pth')

    # a file:// rendezvous in tmp_path cannot collide with another run, unlike a TCP port
    run_processes(_worker, WORLD_SIZE, tmp_path, args=((tmp_path / 'rendezvous').as_uri(),), timeout=JOIN_TIMEOUT_S)

    expected_loss, expected_grads, _ = _loss_and_grads(method, view1, view2)  # one process, the whole batch
    assert all(g.abs().max() > 0 for g in expected_grads.values())
    for rank in range(WORLD_SIZE):
        result = torch.load(tmp_path / f'rank{rank}.pth')
        assert result['same_init'], 'the same seed should build the same SimCLR in every process'
        torch.testing.assert_close(result['loss'], expected_loss, atol=1e-5, rtol=1e-4)
        # without the gather, a process's loss only sees its own half-batch and is a different number
        assert not torch.allclose(result['local_loss'], expected_loss, atol=1e-3)
        assert result['grads'].keys() == expected_grads.keys()
        for name, grad in expected_grads.items():
            torch.testing.assert_close(result['grads'][name], grad, atol=1e-5, rtol=1e-4, msg=lambda m: f'{name}: {m}')


def test_gather_with_grad_is_identity_without_a_process_group():
    assert not (dist.is_available() and dist.is_initialized())
    x = torch.randn(3, 4, requires_grad=True)
    y = gather_with_grad(x)
    assert y is x
    (2 * y).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))


def test_gather_with_grad_is_identity_in_a_one_process_group(tmp_path):
    dist.init_process_group('gloo', init_method=(tmp_path / 'rendezvous').as_uri(), rank=0, world_size=1)
    try:
        x = torch.randn(5, 2, requires_grad=True)
        y = gather_with_grad(x)
        assert y is x
        torch.testing.assert_close(nt_xent(gather_with_grad(x), gather_with_grad(2 * x)), nt_xent(x, 2 * x))
    finally:
        dist.destroy_process_group()
