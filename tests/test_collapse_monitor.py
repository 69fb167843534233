"""The collapse monitor (issue 11's shared piece): its statistics on known embeddings, what it watches, its record
in a resumed run, and its place in the CLI's lines and JSON."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sslcourse.cli import main
from sslcourse.core import seed_everything
from sslcourse.data import get_data
from sslcourse.train.learner import CollapseMonitor, effective_rank, fit_ssl, ssl_learner
from sslcourse.methods.contrastive.simclr import SimCLR
from sslcourse.models import create_encoder
from tests.test_resume import InterruptAfterFirstEpoch

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def data():
    return get_data(limit=20)


def test_effective_rank_of_known_matrices():
    assert effective_rank(torch.eye(16)) == pytest.approx(16, rel=1e-4)                     # all directions equally
    assert effective_rank(torch.randn(100, 1) * torch.randn(1, 16)) == pytest.approx(1, abs=1e-3)  # one line
    weights = torch.tensor([3.0, 1.0])                                                        # two unequal directions
    p = weights / weights.sum()
    assert effective_rank(torch.diag(weights)) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-4)


class Constant(nn.Module):
    "A collapsed projector: the same output for every image."
    def __init__(self, dim): super().__init__(); self.value = nn.Parameter(torch.randn(dim))
    def forward(self, x): return self.value.expand(len(x), -1) + 0 * x.sum(1, keepdim=True)


def _fitted(data, method, epochs=2, **options):
    seed_everything(0)
    learn = ssl_learner(method, data, bs=32, device='cpu', progress='none', probe=False, **options)
    return fit_ssl(learn, epochs, lr=1e-3)


def test_monitor_watches_the_projector_and_sees_a_collapse(data):
    method = SimCLR(create_encoder('convnet', 1), 28, data.mean, data.std)
    method.projector = Constant(16)
    learn = _fitted(data, method, epochs=1)
    (epoch, spread, rank), = learn.collapse_monitor.history
    assert epoch == 1 and learn.collapse_monitor.dimension == 16
    assert spread < 1e-4 and rank < 1.01


def test_monitor_matches_a_direct_computation(data):
    learn = _fitted(data, 'simclr')
    monitor = learn.collapse_monitor
    assert [e for e, _, _ in monitor.history] == [1, 2]
    method = learn.method.eval()
    images = monitor.data.test.images[:monitor.count]
    with torch.no_grad():
        z = F.normalize(method.projector(method.encoder(data.normalize(images))), dim=1)
    assert monitor.history[-1][1] == pytest.approx(float(z.std(0).mean()), rel=1e-3)
    assert monitor.history[-1][2] == pytest.approx(effective_rank(z), rel=1e-3)
    assert 0 < monitor.history[-1][1] < 1.5 * monitor.dimension ** -0.5


def test_monitor_history_survives_a_resume(data, tmp_path):
    path = tmp_path / 'checkpoint.pth'
    with pytest.raises(KeyboardInterrupt):
        fit_ssl(ssl_learner('simclr', data, bs=32, device='cpu', progress='none', checkpoint=path,
                            cbs=[InterruptAfterFirstEpoch()]), 2, lr=1e-3)
    resumed = ssl_learner('simclr', data, bs=32, device='cpu', progress='none', checkpoint=path)
    fit_ssl(resumed, 2, lr=1e-3, resume=path)
    assert [e for e, _, _ in resumed.collapse_monitor.history] == [1, 2]


def test_cli_prints_and_records_the_collapse_statistics(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('IN_TEST', '1')
    main(['pretrain', 'simclr', '--limit', '20', '--epochs', '1', '--bs', '32', '--out', str(tmp_path / 'run'),
          '--json', str(tmp_path / 'run.json')])
    printed = capsys.readouterr().out
    assert 'spread ' in printed and '(1/√d 0.' in printed and 'rank ' in printed
    record = json.loads((tmp_path / 'run.json').read_text())
    assert record['embedding_dim'] > 1 and len(record['collapse_history']) == 1
    epoch, spread, rank = record['collapse_history'][0]
    assert epoch == 1 and 0 < spread < 1 and 1 <= rank <= record['embedding_dim']
