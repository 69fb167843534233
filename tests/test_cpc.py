"CPC (lesson 32): the patch grid is plain slicing, the loss is a loop over images, rows, offsets and candidates, the context is causal, bad options exit 2."
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sslcourse.cli as cli
from sslcourse.core import UsageError, seed_everything
from sslcourse.data import get_data
from sslcourse.train.learner import ssl_learner, fit_ssl, get_method
from sslcourse.models import create_encoder
from sslcourse.methods.contrastive.cpc import (grid_geometry, grid_patches, negative_indices, cpc_loss, GRUContext,
                                   MaskedConvContext, layer_norm_)

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


@pytest.fixture(scope='module')
def data():
    return get_data(limit=20)  # 200 training images


def make(data, **options):
    return get_method('cpc')(create_encoder('convnet', 1), 28, data.mean, data.std, **options)


def test_geometry_scales_with_the_image():
    # (grid, patch, stride, padding per side): a quarter-image patch, half overlap; at least 8 px for the ConvNet
    assert grid_geometry(28) == (6, 8, 4, 0)
    assert grid_geometry(32) == (7, 8, 4, 0)
    assert grid_geometry(64) == (7, 16, 8, 0)
    assert grid_geometry(96) == (7, 24, 12, 0)
    assert grid_geometry(28, grid=7) == (7, 8, 4, 2)  # 7 rows overrun 28 px by 4: zero padding of 2 px per side


@pytest.mark.parametrize('size, grid, patch', [(28, None, None), (28, 7, None), (20, 4, 6)])
def test_grid_patches_equal_manual_slicing(size, grid, patch):
    x = torch.rand(3, 2, size, size)
    grid, patch, stride, padding = grid_geometry(size, grid, patch)
    patches = grid_patches(x, grid, patch, stride, padding)
    assert patches.shape == (3, grid, grid, 2, patch, patch)
    padded = F.pad(x, [padding] * 4)
    for n in range(3):
        for r in range(grid):
            for c in range(grid):
                expected = padded[n, :, r * stride:r * stride + patch, c * stride:c * stride + patch]
                assert torch.equal(patches[n, r, c], expected), (n, r, c)


def test_jittered_patches_are_slices_within_the_jitter():
    x = torch.rand(2, 1, 28, 28)
    grid, patch, stride, padding = grid_geometry(28)
    jitter = 2
    patches = grid_patches(x, grid, patch, stride, padding, jitter, torch.Generator().manual_seed(0))
    padded = F.pad(x, [padding + jitter] * 4)
    moved = 0
    for n in range(2):
        for r in range(grid):
            for c in range(grid):
                matches = [(dy, dx) for dy in range(-jitter, jitter + 1) for dx in range(-jitter, jitter + 1)
                           if torch.equal(patches[n, r, c], padded[n, :, r * stride + jitter + dy:r * stride + jitter + dy + patch,
                                                                    c * stride + jitter + dx:c * stride + jitter + dx + patch])]
                assert matches, (n, r, c)
                moved += (0, 0) not in matches
    assert moved > 0  # the jitter did move patches


def test_negative_indices_are_never_the_positive_and_split_by_image():
    n, grid, offset, count = 5, 6, 2, 10
    index = negative_indices(n, grid, offset, count, same_image=0.4, generator=torch.Generator().manual_seed(0))
    rows = grid - offset
    assert index.shape == (n * rows * grid, count)
    q = torch.arange(len(index))
    image, r, c = q // (rows * grid), (q // grid) % rows, q % grid
    positive = (image * grid + r + offset) * grid + c
    assert (index != positive[:, None]).all()
    owner = index // (grid * grid)
    assert (owner[:, :4] == image[:, None]).all()       # round(10 · 0.4) = 4 other positions of the same image
    assert (owner[:, 4:] != image[:, None]).all()       # the rest from the other images of the batch
    assert index.min() >= 0 and index.max() < n * grid * grid


def naive_cpc_loss(predictions, z, negatives, temperature):
    "A loop over offsets, images, context rows, columns and candidates."
    n, grid, _, dim = z.shape
    flat = z.reshape(-1, dim)
    per_offset = []
    for k in range(1, len(predictions) + 1):
        total, q = 0.0, 0
        for image in range(n):
            for r in range(grid - k):
                for c in range(grid):
                    query = F.normalize(predictions[k - 1][image, r, c], dim=0)
                    candidates = [z[image, r + k, c]] + [flat[int(i)] for i in negatives[k - 1][q]]
                    scores = [math.exp(float(query @ F.normalize(v, dim=0)) / temperature) for v in candidates]
                    total += -math.log(scores[0] / sum(scores))
                    q += 1
        per_offset.append(total / q)
    return sum(per_offset) / len(per_offset)


def test_loss_equals_naive_loop():
    torch.manual_seed(0)
    n, grid, dim, offsets, count = 3, 5, 8, 3, 6
    z = torch.randn(n, grid, grid, dim, dtype=torch.float64)
    predictions = [torch.randn(n, grid - k, grid, dim, dtype=torch.float64) for k in range(1, offsets + 1)]
    negatives = [negative_indices(n, grid, k, count, generator=torch.Generator().manual_seed(k)) for k in range(1, offsets + 1)]
    loss = cpc_loss(predictions, z, negatives, temperature=0.3)
    assert loss.item() == pytest.approx(naive_cpc_loss(predictions, z, negatives, 0.3), rel=1e-5)


@pytest.mark.parametrize('context', [lambda: MaskedConvContext(8, 16), lambda: GRUContext(8, 16)])
def test_context_is_causal_in_rows(context):
    torch.manual_seed(0)
    net = context()
    z = torch.randn(2, 8, 6, 6)
    before = net(z)
    for r in range(5):
        changed = z.clone(); changed[:, :, r + 1:] = torch.randn_like(changed[:, :, r + 1:])
        after = net(changed)
        torch.testing.assert_close(after[:, :, :r + 1], before[:, :, :r + 1])   # rows ≤ r do not see rows below
        assert not torch.allclose(after[:, :, r + 1:], before[:, :, r + 1:])     # rows below do change


@pytest.mark.parametrize('version', [1, 2])
def test_predictions_from_row_r_ignore_the_image_below(data, version):
    "End to end: changing the patches of rows r+1.. leaves every prediction made from rows ≤ r unchanged."
    seed_everything(0)
    method = make(data, version=version).eval()   # v1's batch norm mixes patches in training mode; eval for the check
    patches = method.make_views(data.train.images[:4])[0]
    r = 2
    changed = patches.clone(); changed[:, r + 1:] = torch.randn_like(changed[:, r + 1:])
    with torch.no_grad(): before, after = method(patches), method(changed)
    for k, (a, b) in enumerate(zip(before['predictions'], after['predictions']), 1):
        torch.testing.assert_close(a[:, :r + 1], b[:, :r + 1])


def test_v2_patch_encoder_has_no_batch_norm_and_is_causal_in_training(data):
    "Layer norm normalises each patch alone, so even in training mode the patches below cannot leak in (v2)."
    seed_everything(0)
    method = make(data, version=2).train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in method.encoder.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in method.encoder.modules())
    patches = method.make_views(data.train.images[:4])[0]
    changed = patches.clone(); changed[:, 3:] = 0
    torch.testing.assert_close(method(patches)['predictions'][0][:, :3], method(changed)['predictions'][0][:, :3])
    v1 = make(data, version=1).train()  # batch statistics over every patch: the rows below do leak in training mode
    assert not torch.allclose(v1(patches)['predictions'][0][:, :3], v1(changed)['predictions'][0][:, :3])


def test_layer_norm_replaces_every_batch_norm():
    encoder = layer_norm_(create_encoder('resnet18', 3))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules())
    assert encoder(torch.randn(2, 3, 16, 16)).shape == (2, 512)


@pytest.mark.parametrize('options, fragment', [
    (dict(version=3), 'version must be 1 or 2'), (dict(patch=40), '40-px patch does not fit'),
    (dict(offsets=6), 'offsets must be between 1 and'), (dict(offsets=0), 'offsets'), (dict(grid=1), 'at least 2 rows'),
    (dict(grid=9), 'overruns'), (dict(negatives=0), 'negatives'), (dict(temperature=0.0), 'temperature'),
    (dict(same_image=1.5), 'same_image'), (dict(epoch_fraction=0.0), 'epoch_fraction')])
def test_impossible_options_raise_usage_error(data, options, fragment):
    with pytest.raises(UsageError, match=fragment) as error:
        make(data, **options)
    assert '\n' not in str(error.value)


@pytest.mark.parametrize('option, fragment', [('offsets=6', 'offsets must be between 1 and the grid rows - 1 = 5'),
                                              ('version=3', 'version must be 1 or 2'), ('patch=29', 'does not fit')])
def test_cli_impossible_option_exits_2(tmp_path, capsys, option, fragment):
    code = cli.main(['pretrain', 'cpc', '--device', 'cpu', '--epochs', '1', '-o', option, '--out', str(tmp_path / 'out')])
    _, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2 and 'Traceback' not in err
    assert len(lines) == 1 and lines[0].startswith('sslcourse: error: ') and fragment in lines[0], err
    assert not (tmp_path / 'out' / 'checkpoint.pth').exists()


@pytest.mark.parametrize('version', [1, 2])
def test_tiny_run_trains_on_a_fraction_of_the_images_per_epoch(data, version):
    seed_everything(0)
    learn = ssl_learner('cpc', data, bs=20, device='cpu', knn_every=None, probe=False, progress='none', version=version,
                        epoch_fraction=0.5)
    fit_ssl(learn, 1)
    losses = [float(v) for v in learn.recorder.losses]
    assert len(losses) == 5 and all(np.isfinite(losses))  # epoch_fraction 0.5: 100 of the 200 images, 5 batches of 20
    assert learn.throughput.history[0]['images'] == 100
