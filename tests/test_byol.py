"BYOL's ablation switches (lesson 40's collapse study): each removes exactly the asymmetry it names."
import pytest
import torch
import torch.nn as nn

from sslcourse.train.learner import get_method
from sslcourse.models import create_encoder

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


def make(**options):
    torch.manual_seed(0)
    return get_method('byol')(create_encoder('convnet', 1), 28, (0.286,), (0.353,), **options)


def step(method):
    views = [torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)]
    outputs = method(*views)
    method.loss(outputs).backward()
    return outputs


def test_default_regresses_a_target_without_gradients():
    method = make()
    outputs = step(method)
    assert not outputs['z1'].requires_grad and all(p.grad is None for p in method.target.parameters())
    assert isinstance(method.predictor, nn.Sequential)


def test_no_stop_gradient_sends_gradients_through_both_branches():
    method = make(stop_gradient=False)
    outputs = step(method)
    assert outputs['z1'].requires_grad  # the targets are the online projections themselves
    # the projector gets gradient from the target side too: it differs from the same step with the gradient stopped
    stopped = make(); step(stopped)
    assert not torch.allclose(method.projector[0].weight.grad, stopped.projector[0].weight.grad)


def test_no_predictor_is_the_identity():
    method = make(predictor=False)
    views = [torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)]
    outputs = method(*views)
    projections = method.projector(method.encoder(torch.cat(views)))  # same batch, so the same batch-norm statistics
    assert isinstance(method.predictor, nn.Identity)
    torch.testing.assert_close(outputs['p1'], projections[:8])


def test_base_momentum_zero_copies_the_online_network_every_step():
    method = make(base_momentum=0.0)
    step(method)
    with torch.no_grad():
        for p in method.encoder.parameters(): p.add_(1.0)  # pretend an optimiser step
    method.on_step(0.5)
    assert method.momentum == 0.0
    assert all(torch.equal(t, o) for t, o in zip(method.target[0].parameters(), method.encoder.parameters()))
