"""Pretext tasks of Part 2 (autoencoder, RotNet, relative position, jigsaw, exemplar): every label must describe the
transformation that was applied, so undoing the transformation with the label gives the original back."""

import pytest
import torch

from sslcourse.data import get_data
from sslcourse.models import create_encoder
from sslcourse.methods.pretext.toolkit import (crop_patches, jigsaw_tiles, normalize_tiles, shuffle_tiles, unshuffle_tiles,
                               hamming_permutations, hamming_distances, minimum_hamming_distance, plain_view,
                               blockwise_probe, recalibrate_batchnorm)
from sslcourse.methods.pretext.rotnet import rotate_batch
from sslcourse.methods.pretext.relpos import NEIGHBOURS, patch_pairs
from sslcourse.methods.pretext.autoencoder import Decoder

from tests.pretext import MEAN, STD, build

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


# RotNet ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('rotations, turns', [(4, (0, 1, 2, 3)), (2, (0, 2))])
def test_rotating_back_by_the_label_recovers_the_upright_view(images, rotations, turns):
    method = build('rotnet', rotations=rotations)
    torch.manual_seed(1)
    *rotated, labels = method.make_views(images)
    assert len(rotated) == rotations and labels.shape == (rotations * len(images),)
    upright = rotated[0]
    stacked = torch.cat(rotated)
    for row in range(len(stacked)):
        label = int(labels[row])
        back = torch.rot90(stacked[row], -turns[label], dims=(1, 2))  # undo the quarter turns the label names
        assert torch.equal(back, upright[row % len(images)])
    # and the labels are not trivially right: the images change under rotation
    assert not torch.equal(rotated[1], upright)


def test_rotate_batch_labels_are_grouped_by_rotation():
    x = torch.arange(2 * 9, dtype=torch.float32).view(2, 1, 3, 3)
    rotated, labels = rotate_batch(x)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(rotated[1][0, 0], torch.tensor([[2., 5, 8], [1, 4, 7], [0, 3, 6]]))  # 90° anticlockwise


def test_rotnet_rejects_other_rotation_counts():
    from sslcourse.core import UsageError
    with pytest.raises(UsageError, match='rotations'): build('rotnet', rotations=3)


# Relative position ----------------------------------------------------------------------------------------------

def test_relpos_label_names_the_neighbour_offset():
    # every pixel holds its own coordinates, so a patch says where it was cut from
    size, patch, gap, jitter = 28, 8, 2, 1
    rows, columns = torch.meshgrid(torch.arange(size), torch.arange(size), indexing='ij')
    image = torch.stack([rows, columns]).float()
    images = image.expand(400, -1, -1, -1).contiguous()
    centre, neighbour, labels, corners = patch_pairs(images, patch, gap, jitter, torch.Generator().manual_seed(0))
    assert set(labels.tolist()) == set(range(8))
    centre_corner, neighbour_corner = centre[:, :, 0, 0].long(), neighbour[:, :, 0, 0].long()  # (row, column) read back
    assert torch.equal(centre_corner, corners[:, 0]) and torch.equal(neighbour_corner, corners[:, 1])
    # along an axis the neighbour moved on, it sits a patch plus a gap away; along the other only jitter separates them
    step = torch.round((neighbour_corner - centre_corner) / (patch + gap)).long()
    assert torch.equal(step, torch.tensor(NEIGHBOURS)[labels])
    # re-placing the patch: along each axis with a step, the gap between the patches is gap ± jitter, never negative
    distance = (neighbour_corner - centre_corner).abs()
    moved = step != 0
    assert ((distance[moved] - patch) >= gap - jitter).all() and ((distance[moved] - patch) <= gap + jitter).all()
    assert (distance[~moved] <= 2 * jitter).all()
    # and the patches are exactly the pixels at those corners
    assert torch.equal(neighbour, crop_patches(images, corners[:, 1, 0], corners[:, 1, 1], patch))


def test_relpos_views_and_geometry(images):
    method = build('relpos')
    assert (method.patch, method.gap, method.jitter) == (8, 2, 1)
    centre, neighbour, labels = method.make_views(images)
    assert centre.shape == neighbour.shape == (16, 1, 8, 8) and labels.shape == (16,)
    outputs = method(centre, neighbour, labels)
    assert outputs['logits'].shape == (16, 8) and outputs['features'].shape == (16, 256)
    upsampled = build('relpos', upsample=2)
    assert (upsampled.patch, upsampled.gap, upsampled.jitter) == (16, 4, 2)


# Jigsaw ----------------------------------------------------------------------------------------------------------

def test_tiles_come_in_reading_order_from_their_cells():
    size = 28
    values = torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size).expand(50, -1, -1, -1)
    tiles = jigsaw_tiles(values, grid=3, generator=torch.Generator().manual_seed(0))
    assert tiles.shape == (50, 9, 1, 8, 8)
    corner = tiles[:, :, 0, 0, 0].long()
    row, column = corner // size, corner % size
    # a 27-px grid of 9-px cells sits at offset 0 or 1, and each 8-px tile at offset 0 or 1 inside its cell
    cell_row, cell_column = torch.arange(9) // 3, torch.arange(9) % 3
    for shift in (row - cell_row * 9, column - cell_column * 9): assert shift.min() >= 0 and shift.max() <= 2
    for n in range(50):  # each tile is exactly the 8×8 block at its corner
        for k in range(9):
            r, c = int(row[n, k]), int(column[n, k])
            assert torch.equal(tiles[n, k, 0], values[n, 0, r:r + 8, c:c + 8])


def test_unshuffling_with_the_label_recovers_the_tile_order():
    tiles = torch.randn(32, 9, 1, 8, 8)
    permutations = hamming_permutations(100)
    index = torch.randint(100, (32,))
    shuffled = shuffle_tiles(tiles, permutations, index)
    for n in range(32):  # position i of the puzzle holds tile permutations[index][i]
        for i, tile in enumerate(permutations[index[n]].tolist()): assert torch.equal(shuffled[n, i], tiles[n, tile])
    assert torch.equal(unshuffle_tiles(shuffled, permutations, index), tiles)


def test_jigsaw_views_unshuffle_to_the_tiles_in_reading_order(images):
    method = build('jigsaw')
    torch.manual_seed(3)
    shuffled, index = method.make_views(images)
    torch.manual_seed(3)  # replay the same random draws: the tiles in order, then the permutation indices
    tiles = jigsaw_tiles(images.float() / 255, 3)
    assert torch.equal(index, torch.randint(100, (len(images),)))
    assert torch.allclose(unshuffle_tiles(shuffled, method.permutations, index), normalize_tiles(tiles), atol=1e-6)
    assert not torch.allclose(shuffled, normalize_tiles(tiles))
    outputs = method(shuffled, index)
    assert outputs['logits'].shape == (16, 100) and outputs['features'].shape == (16, 256)


@pytest.mark.parametrize('count', [100])
def test_permutation_set_is_far_apart(count):
    permutations = hamming_permutations(count)
    assert permutations.shape == (count, 9)
    assert torch.equal(permutations.sort(1).values, torch.arange(9).expand(count, 9))  # every row is a permutation
    assert len(torch.unique(permutations, dim=0)) == count
    generator = torch.Generator().manual_seed(0)
    random_set = torch.stack([torch.randperm(9, generator=generator) for _ in range(count)])
    assert minimum_hamming_distance(permutations) > minimum_hamming_distance(random_set)
    distances = hamming_distances(permutations, permutations).float()
    assert distances[~torch.eye(count, dtype=torch.bool)].mean() >= 8.0  # random pairs average 8 (one fixed point)


def test_permutation_set_is_saved_with_the_model():
    method = build('jigsaw', permutations=100)
    state = method.state_dict()
    assert torch.equal(state['permutations'], hamming_permutations(100))
    fresh = build('jigsaw', permutations=100)
    fresh.permutations.zero_()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.permutations, method.permutations)


def test_tile_normalisation_is_per_tile():
    tiles = torch.rand(4, 9, 1, 8, 8) * torch.linspace(0.1, 3, 9).view(1, 9, 1, 1, 1) + 5
    normalised = normalize_tiles(tiles, min_std=1e-6)
    assert torch.allclose(normalised.mean((-3, -2, -1)), torch.zeros(4, 9), atol=1e-4)
    assert torch.allclose(normalised.std((-3, -2, -1)), torch.ones(4, 9), atol=1e-4)


# Autoencoder -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('size', [28, 32, 30])
def test_decoder_output_matches_the_input(size):
    assert Decoder(256, 3, size)(torch.randn(5, 256)).shape == (5, 3, size, size)


@pytest.mark.parametrize('noise', [0.0, 0.3])
def test_autoencoder_reconstructs_the_clean_view(images, noise):
    method = build('autoencoder', noise=noise)
    corrupted, clean = method.make_views(images)
    assert torch.allclose(clean, plain_view(28, MEAN, STD)(images), atol=1e-5)
    outputs = method(corrupted, clean)
    assert outputs['reconstruction'].shape == clean.shape == (16, 1, 28, 28)
    assert outputs['features'].shape == (16, 256)
    assert (noise == 0) == torch.equal(corrupted, clean)
    if noise:  # noise is in pixel units: σ/std in normalised units
        assert abs(float((corrupted - clean).std()) - noise / STD[0]) < 0.05
    assert method.loss(outputs).ndim == 0


# Exemplar --------------------------------------------------------------------------------------------------------

def test_exemplar_samples_come_from_their_seed(images):
    # with every augmentation switched off, a sample is its seed image, so its label must point at that image
    method = build('exemplar', exemplars=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, rotation=0.0, jitter=0.0)
    method.choose_seeds(images)
    assert len(method.seeds) == 8 and len(set(method.seed_index.tolist())) == 8
    clean, samples, index = method.make_views(images)
    assert torch.equal(clean, plain_view(28, MEAN, STD)(images))
    assert torch.allclose(samples, plain_view(28, MEAN, STD)(images[method.seed_index[index]]), atol=1e-5)


def test_exemplar_seeds_are_reproducible_and_fit_small_data(images):
    first, second = build('exemplar', exemplars=1000), build('exemplar', exemplars=1000)
    first.choose_seeds(images); second.choose_seeds(images)
    assert len(first.seeds) == len(images)  # fewer images than exemplars: every image is a seed
    assert torch.equal(first.seed_index, second.seed_index)
    assert (first.seed_index[len(images):] == -1).all()


# The block-by-block probe -----------------------------------------------------------------------------------------------

def test_blockwise_probe_and_batchnorm_recalibration():
    data = get_data(limit=10)
    encoder = create_encoder('convnet', 1)
    results = blockwise_probe(encoder, data)
    assert list(results) == ['block 1', 'block 2', 'block 3', 'block 4', 'pooled']
    assert all(0 <= row['linear'] <= 1 and 0 <= row['knn'] <= 1 and row['features'] <= 2048 for row in results.values())
    recalibrated = recalibrate_batchnorm(encoder, data.train.images, data)
    norm = recalibrated.blocks[0][1]
    assert not torch.equal(norm.running_mean, encoder.blocks[0][1].running_mean)
    assert norm.momentum == encoder.blocks[0][1].momentum  # restored after the cumulative pass
