"PIRL (lesson 34): the loss against a naive loop, the bank's EMA, what the tile head g guarantees, bad options exit 2."
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sslcourse.cli as cli
from sslcourse.core import UsageError, seed_everything
from sslcourse.data import get_data
from sslcourse.train.learner import ssl_learner, fit_ssl, get_method
from sslcourse.losses import info_nce, nce_loss
from sslcourse.methods.contrastive.pirl import pirl_loss, frozen_batchnorm_statistics
from sslcourse.models import create_encoder
from tests.fixtures import write_fashion_mnist

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


@pytest.fixture(scope='module')
def data():
    return get_data(limit=20)  # 200 training images


def make(data, **options):
    return get_method('pirl')(create_encoder('convnet', 1), 28, data.mean, data.std, num_images=len(data.train),
                              **{'negatives': 64, **options})


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def naive_term(query, memory, negatives, temperature, noise_probability=None, normaliser=None):
    "One L_NCE(m_I, q) of PIRL's eq. 4, image by image, in plain Python floats."
    total = 0.0
    for i in range(len(query)):
        own = negatives if negatives.dim() == 2 else negatives[i]
        positive = math.exp(sum(float(a) * float(b) for a, b in zip(query[i], memory[i])) / temperature)
        scores = [math.exp(sum(float(a) * float(b) for a, b in zip(query[i], row)) / temperature) for row in own]
        if normaliser is None:
            total += -math.log(positive / (positive + sum(scores)))
        else:
            noise = len(own) * noise_probability
            total += -math.log(positive / normaliser / (positive / normaliser + noise))
            total += -sum(math.log(noise / (score / normaliser + noise)) for score in scores)
    return total / len(query)


@pytest.mark.parametrize('weight', [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize('shared', [True, False])
def test_softmax_loss_equals_a_naive_loop(weight, shared):
    image, tiles, memory = unit(5, 16, seed=1), unit(5, 16, seed=2), unit(5, 16, seed=3)
    negatives = unit(7, 16, seed=4) if shared else unit(5, 7, 16, seed=4)
    expected = weight * naive_term(tiles, memory, negatives, 0.07) + (1 - weight) * naive_term(image, memory, negatives, 0.07)
    loss = pirl_loss(image, tiles, memory, negatives, 0.07, weight)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize('weight', [0.0, 0.5, 1.0])
def test_nce_loss_equals_a_naive_loop(weight):
    image, tiles, memory, negatives = unit(4, 8, seed=1), unit(4, 8, seed=2), unit(4, 8, seed=3), unit(6, 8, seed=4)
    normaliser, noise_probability = 37.0, 1 / 200
    expected = (weight * naive_term(tiles, memory, negatives, 0.1, noise_probability, normaliser)
                + (1 - weight) * naive_term(image, memory, negatives, 0.1, noise_probability, normaliser))
    loss = pirl_loss(image, tiles, memory, negatives, 0.1, weight, noise_probability, normaliser)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_lambda_zero_is_npid_and_needs_no_tiles():
    image, memory, negatives = unit(6, 32, seed=1), unit(6, 32, seed=2), unit(9, 32, seed=3)
    torch.testing.assert_close(pirl_loss(image, None, memory, negatives, 0.07, 0.0), info_nce(image, memory, negatives, 0.07))
    torch.testing.assert_close(pirl_loss(image, None, memory, negatives, 0.07, 0.0, 1 / 50, 12.0),
                               nce_loss(image, memory, negatives, 0.07, 1 / 50, 12.0))


def test_lambda_zero_method_loss_equals_npid_method_loss(data):
    "Same embeddings, same bank, same negatives drawn: PIRL with λ = 0 computes NPID's loss, and makes one view."
    pirl, npid = make(data, tile_weight=0.0), get_method('npid')(create_encoder('convnet', 1), 28, data.mean, data.std,
                                                                  num_images=len(data.train), negatives=64)
    npid.bank.items.copy_(pirl.bank.items)
    assert len(pirl.make_views(data.train.images[:4])) == 1
    outputs, indices = dict(z=unit(8, 128, seed=5).float()), torch.arange(10, 18)
    for loss in ('softmax', 'nce'):
        pirl.objective = npid.objective = loss
        torch.manual_seed(3); ours = pirl.loss(outputs, None, indices)
        torch.manual_seed(3); theirs = npid.loss(outputs, None, indices)
        torch.testing.assert_close(ours, theirs)


def test_bank_is_updated_at_the_batch_indices_only(data):
    seed_everything(0)
    method = make(data)
    before = method.bank.items.clone()
    indices = torch.tensor([3, 17, 150, 42])
    outputs = method(*method.make_views(data.train.images[indices]))
    loss = method.loss(outputs, data.train.labels[indices], indices)
    loss.backward()
    assert torch.isfinite(loss) and method.tile_projection.weight.grad.abs().sum() > 0  # g is trained at λ = 0.5
    method.on_step(0.0)
    # m_I ← normalise(0.5·m_I + 0.5·f(v_I)): the image head's embedding, not the tiles'
    expected = F.normalize(0.5 * before[indices] + 0.5 * outputs['z'].detach(), dim=1)
    torch.testing.assert_close(method.bank.items[indices], expected)
    others = torch.ones(len(before), dtype=torch.bool); others[indices] = False
    torch.testing.assert_close(method.bank.items[others], before[others])
    assert method.pending is None


def test_tile_head_depends_on_the_tiles_only_through_the_shuffled_sequence(data):
    """g encodes each tile on its own, so permuting the tiles and undoing it in the order gives the same output; the
    concatenation is order-sensitive, so the same tiles in another order give another output. Invariance to the
    order is therefore not built in: it can only be learned from the random shuffle, which `make_views` draws anew."""
    seed_everything(0)
    method = make(data).eval()
    images = data.train.images[:6]
    _, tiles, order = method.make_views(images)
    assert tiles.shape == (6, 9, 1, 8, 8) and (order.sort(1).values == torch.arange(9)).all()
    assert len({tuple(row.tolist()) for row in order}) > 1  # a fresh order per image
    with torch.no_grad():
        reference = method.embed_tiles(tiles, order)
        permutation = torch.randperm(9, generator=torch.Generator().manual_seed(1)).expand(6, -1)
        moved = torch.take_along_dim(tiles, permutation[..., None, None, None], dim=1)  # moved[:, j] = tiles[:, perm[j]]
        torch.testing.assert_close(method.embed_tiles(moved, permutation.argsort(1).gather(1, order)), reference)
        other_order = order.roll(1, dims=1)
        assert not torch.allclose(method.embed_tiles(tiles, other_order), reference, atol=1e-4)
    assert torch.allclose(reference.norm(dim=1), torch.ones(6))


def test_tiles_leave_the_batchnorm_running_statistics_to_whole_images(data):
    seed_everything(0)
    method = make(data).train()
    views = method.make_views(data.train.images[:16])
    norm = method.encoder.blocks[0][1]
    start = norm.running_mean.clone()
    method.embed_tiles(views[1], views[2])
    torch.testing.assert_close(norm.running_mean, start)   # the tile pass did not move them
    assert norm.momentum == 0.1                             # and the momentum is restored
    method(views[0])
    assert not torch.allclose(norm.running_mean, start)     # the whole-image pass does
    with frozen_batchnorm_statistics(method): assert norm.momentum == 0.0


@pytest.mark.parametrize('options, fragment', [
    (dict(tile_weight=-0.1), r'λ must be in \[0, 1\]'), (dict(tile_weight=1.5), r'λ must be in \[0, 1\]'),
    (dict(negatives=201), 'bank size 200'), (dict(negatives=0), 'negatives'),
    (dict(momentum=1.0), 'momentum'), (dict(momentum=-0.1), 'momentum'),
    (dict(temperature=0.0), 'temperature'), (dict(temperature=-1.0), 'temperature'),
    (dict(loss='hinge'), "'nce' or 'softmax'")])
def test_impossible_options_raise_usage_error(data, options, fragment):
    with pytest.raises(UsageError, match=fragment) as error:
        ssl_learner('pirl', data, bs=50, device='cpu', knn_every=None, probe=False, progress='none',
                    **{'negatives': 64, **options})
    assert '\n' not in str(error.value) and str(error.value).startswith('pirl: ')


def test_cli_k_larger_than_the_bank_exits_2(tmp_path, monkeypatch, capsys):
    "200 training images cannot supply the default K = 1024 negatives: one line, status 2, nothing trained."
    monkeypatch.chdir(tmp_path)
    write_fashion_mnist(tmp_path, per_class_train=20, per_class_test=10)
    code = cli.main(['pretrain', 'pirl', '--data', 'fashion_mnist', '--data-dir', str(tmp_path), '--device', 'cpu',
                     '--epochs', '1', '--out', str(tmp_path / 'out')])
    _, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith('sslcourse: error: pirl: ') and 'K=1024' in lines[0], err
    assert not (tmp_path / 'out' / 'checkpoint.pth').exists()


def test_cli_lambda_outside_0_1_exits_2(tmp_path, capsys):
    code = cli.main(['pretrain', 'pirl', '--device', 'cpu', '--epochs', '1', '-o', 'tile_weight=1.5',
                     '--out', str(tmp_path / 'out')])
    _, err = capsys.readouterr()
    assert code == 2 and err.count('\n') == 1 and 'λ must be in [0, 1]' in err, err


@pytest.mark.parametrize('tile_weight', [0.5, 1.0])
def test_tiny_run_trains_and_writes_every_entry(data, tile_weight):
    seed_everything(0)
    learn = ssl_learner('pirl', data, bs=50, device='cpu', knn_every=None, probe=False, progress='none', negatives=64,
                        tile_weight=tile_weight)
    method = learn.method
    method.fill_bank(learn.dls.train.split.images, data)  # what epoch 1 starts from (the same network: the same rows)
    filled = method.bank.items.clone()
    fit_ssl(learn, 1)
    losses = [float(v) for v in learn.recorder.losses]
    assert len(losses) == 4 and all(np.isfinite(losses))
    bank = method.bank.items
    assert (bank != filled).any(1).all()  # one epoch visits each image once: every entry was written
    assert torch.allclose(bank.norm(dim=1), torch.ones(len(bank))) and method.pending is None
