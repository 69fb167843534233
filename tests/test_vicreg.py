"VICReg (lesson 43): the loss is `vicreg_loss` on the method's projections, a zero weight drops exactly its term, bad options exit 2."
import numpy as np
import pytest
import torch

import sslcourse.cli as cli
from sslcourse.core import UsageError, seed_everything
from sslcourse.data import get_data
from sslcourse.train.learner import ssl_learner, fit_ssl, get_method
from sslcourse.losses import vicreg_loss
from sslcourse.models import create_encoder

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


def make(**options):
    torch.manual_seed(0)
    return get_method('vicreg')(create_encoder('convnet', 1), 28, (0.286,), (0.353,), projection_dim=64, hidden_dim=64,
                                **options)


def outputs_of(method, n=16):
    torch.manual_seed(1)
    return method(torch.randn(n, 1, 28, 28), torch.randn(n, 1, 28, 28))


def naive_terms(z1, z2):
    "Invariance, variance (averaged over the branches) and covariance with Python loops, from the paper's definitions."
    z1, z2 = z1.double().tolist(), z2.double().tolist()
    n, d = len(z1), len(z1[0])
    invariance = sum((a - b) ** 2 for r1, r2 in zip(z1, z2) for a, b in zip(r1, r2)) / (n * d)
    variance = covariance = 0.0
    for z in (z1, z2):
        means = [sum(z[b][j] for b in range(n)) / n for j in range(d)]
        cov = [[sum((z[b][i] - means[i]) * (z[b][j] - means[j]) for b in range(n)) / (n - 1) for j in range(d)]
               for i in range(d)]
        variance += sum(max(0.0, 1 - (cov[j][j] + 1e-4) ** 0.5) for j in range(d)) / d / 2
        covariance += sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    return torch.tensor([invariance, variance, covariance], dtype=torch.float64)


def test_loss_is_vicreg_loss_on_the_projections():
    method = make(invariance_weight=3.0, variance_weight=7.0, covariance_weight=0.5)
    outputs = outputs_of(method)
    torch.testing.assert_close(method.loss(outputs), vicreg_loss(outputs['z1'], outputs['z2'], 3.0, 7.0, 0.5))
    assert outputs['z1'].shape == (16, 64) and outputs['features'].shape == (16, method.encoder.num_features)


def test_terms_match_a_loop_reference():
    torch.manual_seed(2)
    z1, z2 = torch.randn(10, 6) * 0.7, torch.randn(10, 6) * 1.3 + 0.2  # some dimensions below unit std, some above
    method = make()
    terms = method.terms(dict(z1=z1, z2=z2))
    torch.testing.assert_close(terms.double(), naive_terms(z1, z2), rtol=1e-5, atol=1e-6)
    assert (terms > 0).all()  # every term is active on these inputs, so dropping one changes the loss


@pytest.mark.parametrize('dropped', [0, 1, 2])
def test_a_zero_weight_removes_exactly_that_term(dropped):
    defaults = [25.0, 25.0, 1.0]
    weights = [0.0 if i == dropped else w for i, w in enumerate(defaults)]
    method = make(**dict(zip(['invariance_weight', 'variance_weight', 'covariance_weight'], weights)))
    outputs = outputs_of(method)
    reference = naive_terms(outputs['z1'].detach(), outputs['z2'].detach())
    expected = sum(w * t for w, t in zip(weights, reference))
    torch.testing.assert_close(method.loss(outputs).detach().double(), expected, rtol=1e-5, atol=1e-5)
    full = sum(w * t for w, t in zip(defaults, reference))
    torch.testing.assert_close(full - expected, defaults[dropped] * reference[dropped])


def test_gradients_reach_encoder_and_expander():
    method = make()
    method.loss(outputs_of(method)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.parameters() if p.requires_grad)


@pytest.mark.parametrize('options, fragment', [
    (dict(invariance_weight=-1.0), 'invariance_weight must be at least 0'),
    (dict(variance_weight=-0.5), 'variance_weight must be at least 0'),
    (dict(covariance_weight=-2.0), 'covariance_weight must be at least 0'),
    (dict(invariance_weight=0.0, variance_weight=0.0, covariance_weight=0.0), 'all 0'),
    (dict(projection_dim=0), 'projection_dim must be a positive integer'),
    (dict(hidden_dim=-4), 'hidden_dim must be a positive integer')])
def test_impossible_options_raise_usage_error(options, fragment):
    with pytest.raises(UsageError, match=fragment) as error:
        get_method('vicreg')(create_encoder('convnet', 1), 28, (0.286,), (0.353,), **options)
    assert '\n' not in str(error.value)


@pytest.mark.parametrize('option, fragment', [('variance_weight=-1', 'variance_weight'),
                                              ('projection_dim=0', 'projection_dim')])
def test_cli_bad_option_exits_2(tmp_path, capsys, option, fragment):
    code = cli.main(['pretrain', 'vicreg', '--device', 'cpu', '--epochs', '1', '--limit', '5', '-o', option,
                     '--out', str(tmp_path / 'out')])
    out, err = capsys.readouterr()
    assert code == 2 and 'Traceback' not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('sslcourse: error: ') and fragment in lines[0], err
    assert not (tmp_path / 'out' / 'checkpoint.pth').exists()


def test_cli_all_weights_zero_exits_2(tmp_path, capsys):
    code = cli.main(['pretrain', 'vicreg', '--device', 'cpu', '--epochs', '1', '--limit', '5', '-o', 'invariance_weight=0',
                     '-o', 'variance_weight=0', '-o', 'covariance_weight=0', '--out', str(tmp_path / 'out')])
    assert code == 2 and 'all 0' in capsys.readouterr().err


def test_tiny_run_trains():
    data = get_data(limit=10)  # 100 training images
    seed_everything(0)
    learn = ssl_learner('vicreg', data, bs=50, device='cpu', knn_every=None, probe=False, progress='none',
                        projection_dim=128, hidden_dim=128)
    fit_ssl(learn, 2)
    losses = [float(v) for v in learn.recorder.losses]
    assert len(losses) == 4 and all(np.isfinite(losses))
