"SimSiam (lesson 41): the loss against a loop, the stop-gradient, the predictor's fixed rate, bad options exit 2."
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sslcourse.cli as cli
from sslcourse.core import UsageError, seed_everything
from sslcourse.data import get_data
from sslcourse.train.learner import ssl_learner, fit_ssl, get_method
from sslcourse.methods.distillation.simsiam import negative_cosine
from sslcourse.models import create_encoder

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


def make(**options):
    torch.manual_seed(0)
    return get_method('simsiam')(create_encoder('convnet', 1), 28, (0.286,), (0.353,), **options)


def views(n=8):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 28, 28, generator=generator), torch.randn(n, 1, 28, 28, generator=generator)


def naive_negative_cosine(p, z):
    total = 0.0
    for row_p, row_z in zip(p.tolist(), z.tolist()):
        dot = sum(a * b for a, b in zip(row_p, row_z))
        total += -dot / (math.sqrt(sum(a * a for a in row_p)) * math.sqrt(sum(b * b for b in row_z)))
    return total / len(p)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_loss_equals_a_naive_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    p1, p2, z1, z2 = (torch.randn(7, 12, generator=generator) for _ in range(4))
    assert float(negative_cosine(p1, z1)) == pytest.approx(naive_negative_cosine(p1, z1), abs=1e-5)
    loss = make().loss(dict(p1=p1, p2=p2, z1=z1, z2=z2))  # symmetric: each prediction against the other view
    expected = (naive_negative_cosine(p1, z2) + naive_negative_cosine(p2, z1)) / 2
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    assert float(negative_cosine(p1, 3 * p1)) == pytest.approx(-1, abs=1e-6)  # the minimum: same direction


def _projection_gradient(method):
    "The gradient of the loss with respect to the projector's output z (2N, d), and the outputs."
    captured = {}
    def keep(module, inputs, output): output.retain_grad(); captured['z'] = output
    handle = method.projector.register_forward_hook(keep)
    outputs = method(*views())
    method.loss(outputs).backward()
    handle.remove()
    return captured['z'], outputs


def test_stop_gradient_cuts_the_target_branch():
    "Without a predictor, ∂L/∂z₁ must be exactly the prediction side's: ½·∂D(z₁, z₂)/∂z₁, nothing from the target side."
    method = make(predictor=False)
    z, outputs = _projection_gradient(method)
    assert outputs['z1'].grad_fn is None and not outputs['z1'].requires_grad
    a, b = z.detach().chunk(2)
    n = len(a)
    cosine = F.cosine_similarity(a, b, dim=1)[:, None]
    # d(−cos(a, b))/da = −(b̂ − cos·â)/‖a‖, averaged over the batch and halved by the symmetrisation
    expected = -(F.normalize(b, dim=1) - cosine * F.normalize(a, dim=1)) / a.norm(dim=1, keepdim=True) / (2 * n)
    torch.testing.assert_close(z.grad[:n], expected, rtol=1e-4, atol=1e-7)


def test_without_stop_gradient_the_target_branch_gets_gradient():
    method = make(predictor=False, stop_gradient=False)
    z, outputs = _projection_gradient(method)
    assert outputs['z1'].requires_grad
    a, b = z.detach().chunk(2)
    n = len(a)
    cosine = F.cosine_similarity(a, b, dim=1)[:, None]
    one_side = -(F.normalize(b, dim=1) - cosine * F.normalize(a, dim=1)) / a.norm(dim=1, keepdim=True) / (2 * n)
    torch.testing.assert_close(z.grad[:n], 2 * one_side, rtol=1e-4, atol=1e-7)  # both terms now reach z₁


def test_the_encoder_is_trained_only_through_the_predictions():
    method = make()
    outputs = method(*views())
    method.loss(outputs).backward()
    assert all(p.grad is not None for p in method.predictor.parameters())
    assert all(p.grad is not None for p in method.encoder.parameters())


def test_predictor_parameters_and_only_they_have_a_fixed_rate():
    method = make()
    groups = method.parameter_groups()
    fixed = [p for group in groups if group.get('fixed_lr') for p in group['params']]
    assert {id(p) for p in fixed} == {id(p) for p in method.predictor.parameters()}
    scheduled = [p for group in groups if not group.get('fixed_lr') for p in group['params']]
    assert len(fixed) + len(scheduled) == sum(1 for p in method.parameters() if p.requires_grad)
    assert all(group['weight_decay'] == 0 for group in groups if all(p.ndim <= 1 for p in group['params']))
    assert not any(group.get('fixed_lr') for group in make(predictor=False).parameter_groups())  # identity: nothing


def test_fit_keeps_the_predictor_at_the_peak_rate():
    data = get_data(limit=10)  # 100 training images
    seed_everything(0)
    learn = ssl_learner('simsiam', data, bs=50, device='cpu', knn_every=None, probe=False, progress='none')
    fit_ssl(learn, 1)
    losses = [float(v) for v in learn.recorder.losses]
    assert len(losses) == 2 and all(np.isfinite(losses)) and all(-1 <= v <= 1 for v in losses)
    for group in learn.opt.opt.param_groups:
        if group['fixed_lr']: assert group['lr'] == learn.lr
        else: assert group['lr'] < learn.lr  # scheduled: one-cycle is on its way down


def test_output_batch_norm_switch():
    assert isinstance(make().projector[-1], nn.BatchNorm1d) and not make().projector[-1].affine
    assert isinstance(make(output_batch_norm=False).projector[-1], nn.Linear)


@pytest.mark.parametrize('options, fragment', [
    (dict(projection_dim=0), 'projection_dim must be a positive integer'),
    (dict(hidden_dim=-4), 'hidden_dim must be a positive integer'),
    (dict(predictor_dim=2.5), 'predictor_dim must be a positive integer'),
    (dict(predictor='yes'), 'predictor must be True or False'),
    (dict(stop_gradient=0), 'stop_gradient must be True or False')])
def test_impossible_options_raise_usage_error(options, fragment):
    with pytest.raises(UsageError, match=fragment) as error: make(**options)
    assert '\n' not in str(error.value)


@pytest.mark.parametrize('pair, fragment', [('projection_dim=0', 'projection_dim'), ('stop_gradient=maybe', 'must be true or false')])
def test_cli_bad_options_exit_2(tmp_path, capsys, pair, fragment):
    code = cli.main(['pretrain', 'simsiam', '-o', pair, '--device', 'cpu', '--epochs', '1', '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert code == 2 and 'Traceback' not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('sslcourse: error: ') and fragment in lines[0], err
    assert not (tmp_path / 'out' / 'checkpoint.pth').exists()
