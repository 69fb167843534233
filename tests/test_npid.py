"NPID (lesson 33): the memory bank is written at the batch's indices, Z is estimated once, bad options exit 2."
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sslcourse.cli as cli
from tests.fixtures import write_fashion_mnist
from sslcourse.core import UsageError, seed_everything
from sslcourse.data import get_data
from sslcourse.train.learner import ssl_learner, fit_ssl, get_method
from sslcourse.models import create_encoder

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


@pytest.fixture(scope='module')
def data():
    return get_data(limit=20)  # 200 training images


def make(data, **options):
    NPID = get_method('npid')
    return NPID(create_encoder('convnet', 1), 28, data.mean, data.std, num_images=len(data.train),
                **{'negatives': 64, **options})


def one_step(method, data, indices):
    views = method.make_views(data.train.images[indices])
    outputs = method(*views)
    loss = method.loss(outputs, data.train.labels[indices], indices)
    loss.backward()
    method.on_step(0.0)
    return outputs, loss


def test_bank_is_updated_at_the_batch_indices(data):
    seed_everything(0)
    method = make(data)
    before = method.bank.items.clone()
    indices = torch.tensor([3, 17, 150, 42])
    outputs, loss = one_step(method, data, indices)
    assert torch.isfinite(loss)
    expected = F.normalize(0.5 * before[indices] + 0.5 * outputs['z'].detach(), dim=1)
    torch.testing.assert_close(method.bank.items[indices], expected)
    others = torch.ones(len(before), dtype=torch.bool); others[indices] = False
    torch.testing.assert_close(method.bank.items[others], before[others])  # every other entry untouched
    assert method.pending is None  # written once, not again on the next step


def test_normaliser_is_set_once_and_stays(data):
    seed_everything(0)
    method = make(data, loss='nce')
    assert float(method.normaliser) == 0
    one_step(method, data, torch.arange(0, 16))
    first = float(method.normaliser)
    # Z ≈ n·E[exp(q·v/τ)] ≥ n·exp(−1/τ) and ≤ n·exp(1/τ)
    assert len(data.train) * math.exp(-1 / 0.07) < first < len(data.train) * math.exp(1 / 0.07)
    for start in (16, 32):
        one_step(method, data, torch.arange(start, start + 16))
        assert float(method.normaliser) == first
    assert 'normaliser' in method.state_dict() and 'bank.items' in method.state_dict()  # both checkpointed


def test_softmax_default_needs_no_normaliser(data):
    seed_everything(0)
    method = make(data)
    assert method.objective == 'softmax'
    _, loss = one_step(method, data, torch.arange(8))
    assert torch.isfinite(loss) and float(method.normaliser) == 0


@pytest.mark.parametrize('options, fragment', [
    (dict(negatives=201), 'bank size 200'), (dict(negatives=0), 'negatives'),
    (dict(momentum=1.0), 'momentum'), (dict(momentum=-0.1), 'momentum'),
    (dict(temperature=0.0), 'temperature'), (dict(loss='hinge'), "'nce' or 'softmax'")])
def test_impossible_options_raise_usage_error(data, options, fragment):
    with pytest.raises(UsageError, match=fragment) as error:
        ssl_learner('npid', data, bs=50, device='cpu', knn_every=None, probe=False, progress='none',
                    **{'negatives': 64, **options})
    assert '\n' not in str(error.value)


def test_cli_k_larger_than_the_bank_exits_2(data, tmp_path, monkeypatch, capsys):
    "200 training images cannot supply the default K = 1024 negatives: one line, status 2, nothing trained."
    monkeypatch.chdir(tmp_path)
    write_fashion_mnist(tmp_path, per_class_train=20)  # the 200 training images of `data`
    code = cli.main(['pretrain', 'npid', '--data', 'fashion_mnist', '--data-dir', str(tmp_path), '--device', 'cpu',
                     '--epochs', '1', '--out', str(tmp_path / 'out')])
    out, err = capsys.readouterr()
    assert code == 2 and 'Traceback' not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('sslcourse: error: ') and 'K=1024' in lines[0], err
    assert not (tmp_path / 'out' / 'checkpoint.pth').exists()


def test_tiny_run_trains(data):
    seed_everything(0)
    learn = ssl_learner('npid', data, bs=50, device='cpu', knn_every=None, probe=False, progress='none', negatives=64)
    before = learn.method.bank.items.clone()
    fit_ssl(learn, 1)
    losses = [float(v) for v in learn.recorder.losses]
    assert len(losses) == 4 and all(np.isfinite(losses))
    changed = (learn.method.bank.items != before).any(1)
    assert changed.all()  # one epoch visits every image once, so every entry was written


def test_tiny_nce_run_trains_and_fills_the_bank_first(data):
    seed_everything(0)
    learn = ssl_learner('npid', data, bs=50, device='cpu', knn_every=None, probe=False, progress='none', negatives=64,
                        loss='nce')
    method = learn.method
    method.fill_bank(learn.dls.train.split.images, data)  # what the first epoch starts with: clean embeddings at init
    own = ((method.bank.items @ method.bank.items.T).argmax(1) == torch.arange(len(data.train))).float().mean()
    assert own > 0.9 and torch.allclose(method.bank.items.norm(dim=1), torch.ones(len(data.train)))
    fit_ssl(learn, 1)
    assert all(np.isfinite([float(v) for v in learn.recorder.losses])) and float(method.normaliser) > 0


def _two_process_bank_update(rank: int, folder: str, port: int):
    "One NPID step per gloo process on different images; each saves what it wrote and its whole bank."
    import os
    os.environ.update(WORLD_SIZE='2', RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist
    dist.init_process_group('gloo', rank=rank, world_size=2)
    data = get_data(limit=20)
    seed_everything(0)                                  # identical weights and initial bank on both processes
    method = make(data)
    before = method.bank.items.clone()
    indices = torch.tensor([[3, 17, 150], [42, 99, 7]][rank])  # disjoint, as a sharded epoch gives them
    torch.manual_seed(10 + rank)                        # each process its own augmentations
    outputs, _ = one_step(method, data, indices)
    torch.save(dict(before=before, indices=indices, z=outputs['z'].detach(), bank=method.bank.items), f'{folder}/rank{rank}.pth')
    dist.destroy_process_group()


def test_bank_updates_from_both_processes_land(tmp_path):
    from tests.processes import free_port, run_processes
    run_processes(_two_process_bank_update, 2, tmp_path, args=(free_port(),), timeout=120)
    first, second = (torch.load(tmp_path / f'rank{rank}.pth') for rank in range(2))
    assert torch.equal(first['bank'], second['bank'])  # every process holds the same bank afterwards
    expected = first['before'].clone()
    for saved in (first, second):  # a single process writing both ranks' rows gives the same bank
        expected[saved['indices']] = F.normalize(0.5 * first['before'][saved['indices']] + 0.5 * saved['z'], dim=1)
    torch.testing.assert_close(first['bank'], expected)
