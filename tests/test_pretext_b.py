"""Pretext tasks of Part 2 (context encoder, colorisation, counting, Selfie): the colour conversion is right, the
masks hide exactly what they say, the losses score only what they should, and every label points at what was hidden."""

import pytest
import torch

from sslcourse.core import UsageError
from sslcourse.methods.pretext.color import (rgb_to_lab, lab_to_rgb, ab_bins, nearest_bin, soft_encode, smoothing_matrix,
                             rebalancing_weights, colorization_loss, annealed_mean, photo_patches)
from sslcourse.methods.pretext.context_encoder import center_mask, block_mask, overlap_weights, inpainting_loss
from sslcourse.methods.pretext.counting import split_tiles, downsample, counting_loss
from sslcourse.methods.pretext.selfie import to_patches, selfie_task, take, selfie_loss

from tests.pretext import MEAN, STD, build

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


# Colour: Lab conversion, bins, rebalancing ----------------------------------------------------------------------

def lab_of(*rgb):
    return rgb_to_lab(torch.tensor(rgb, dtype=torch.float64).view(1, 3, 1, 1)).flatten()


@pytest.mark.parametrize('rgb, lab', [
    ((1, 1, 1), (100, 0, 0)),                 # white
    ((0, 0, 0), (0, 0, 0)),                   # black
    ((0.5, 0.5, 0.5), (53.389, 0, 0)),        # mid grey: L from the sRGB curve, no colour
    ((1, 0, 0), (53.241, 80.092, 67.203)),    # sRGB red
    ((0, 1, 0), (87.735, -86.183, 83.179)),   # sRGB green
    ((0, 0, 1), (32.297, 79.188, -107.860)),  # sRGB blue
])
def test_lab_known_values(rgb, lab):
    assert torch.allclose(lab_of(*rgb), torch.tensor(lab, dtype=torch.float64), atol=0.01)


@pytest.mark.parametrize('dtype, tolerance', [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_lab_round_trip_is_the_identity(dtype, tolerance):
    rgb = torch.rand(4, 3, 9, 9, dtype=dtype, generator=torch.Generator().manual_seed(0))
    rgb[0, :, 0, 0] = 0; rgb[0, :, 0, 1] = 1  # the ends of the range, where the curves switch branches
    assert (lab_to_rgb(rgb_to_lab(rgb), clip=False) - rgb).abs().max() < tolerance


def test_lab_to_rgb_clips_out_of_gamut_colours():
    lab = torch.tensor([50., 120, -120]).view(1, 3, 1, 1)  # far outside sRGB
    assert not ((lab_to_rgb(lab, clip=False) >= 0) & (lab_to_rgb(lab, clip=False) <= 1)).all()
    clipped = lab_to_rgb(lab)
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_bins_are_a_grid_of_real_colours():
    centers = ab_bins()
    assert centers.shape == (262, 2)
    assert torch.equal(centers % 10, torch.zeros_like(centers))                    # on the 10-unit grid
    assert len({tuple(c) for c in centers.tolist()}) == len(centers)               # no duplicates
    assert (centers == 0).all(1).any()                                             # grey is a bin
    assert not ((centers[:, 0] == 110) & (centers[:, 1] == 110)).any()             # far corner: no sRGB colour


def test_quantisation_is_consistent():
    centers = ab_bins()
    # each centre quantises to itself
    at_centers = centers.T.reshape(1, 2, 1, -1)
    assert torch.equal(nearest_bin(at_centers, centers).flatten(), torch.arange(len(centers)))
    # soft targets: a distribution on the 5 nearest bins whose largest weight is the nearest bin
    ab = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(1)) * 30
    target = soft_encode(ab, centers)
    assert target.shape == (3, len(centers), 6, 6)
    assert torch.allclose(target.sum(1), torch.ones(3, 6, 6))
    assert ((target > 0).sum(1) == 5).all()
    assert torch.equal(target.argmax(1), nearest_bin(ab, centers))
    # the nearest bin really is nearest: no other centre is closer
    chosen = centers[nearest_bin(ab, centers)]                                     # (3, 6, 6, 2)
    distances = (ab.permute(0, 2, 3, 1)[..., None, :] - centers).norm(dim=-1)
    assert torch.allclose((chosen - ab.permute(0, 2, 3, 1)).norm(dim=-1), distances.min(-1).values)


def test_rebalancing_favours_rare_colours_and_averages_to_one():
    centers = ab_bins()
    counts = torch.ones(len(centers)); grey = int(nearest_bin(torch.zeros(1, 2, 1, 1), centers))
    counts[grey] = 1000
    smoothing = smoothing_matrix(centers)
    weights = rebalancing_weights(counts, smoothing)
    smoothed = counts / counts.sum() @ smoothing
    assert torch.isclose((smoothed * weights).sum(), torch.tensor(1.0))
    assert weights[grey] == weights.min() and weights[grey] < 1
    # λ = 1 is no rebalancing: every weight is 1
    assert torch.allclose(rebalancing_weights(counts, smoothing, mix=1.0), torch.ones(len(centers)))


def test_colorization_loss_weights_pixels_by_their_bin():
    centers = ab_bins()
    ab = torch.zeros(1, 2, 2, 2); ab[0, 0, 0, 0] = 60                              # one reddish pixel, three grey
    target = soft_encode(ab, centers)
    logits = torch.zeros(1, len(centers), 2, 2)
    weights = torch.ones(len(centers)); weights[nearest_bin(ab, centers)[0, 0, 0]] = 5
    plain = colorization_loss(logits, target)
    assert torch.isclose(plain, torch.log(torch.tensor(float(len(centers)))))      # uniform prediction: log Q
    assert torch.isclose(colorization_loss(logits, target, weights), plain * (5 + 3) / 4)


def test_annealed_mean_goes_from_mode_to_mean():
    centers = ab_bins()
    logits = torch.full((1, len(centers), 1, 1), -10.0); logits[0, 0] = 2; logits[0, 1] = 1
    assert torch.allclose(annealed_mean(logits, centers, 0.01).flatten(), centers[0], atol=1e-3)
    probabilities = torch.softmax(logits, 1)
    mean = torch.einsum('nqhw,qc->nc', probabilities, centers)
    assert torch.allclose(annealed_mean(logits, centers, 1.0).flatten(), mean.flatten(), atol=1e-4)


def test_photo_patches_are_colour_and_labelled():
    data = photo_patches(40, 10)
    assert data.train.images.shape == (40, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.num_classes == 8 and 0 <= data.train.labels.min() and data.train.labels.max() < 8
    lab = rgb_to_lab(data.train.images.float() / 255)
    assert lab[:, 1:].abs().mean() > 3  # real colour, not grey


def test_colorization_refuses_grey_data():
    with pytest.raises(UsageError) as error: build('colorization')
    message = str(error.value)
    assert '\n' not in message and all(name in message for name in ('cifar10', 'stl10', 'imagenette'))


# Context encoder -----------------------------------------------------------------------------------------------

def test_center_mask_covers_exactly_the_central_square():
    mask = center_mask(3, 28, hole=0.5)
    assert mask.shape == (3, 1, 28, 28)
    expected = torch.zeros(28, 28); expected[7:21, 7:21] = 1
    assert torch.equal(mask[1, 0], expected)
    assert mask.sum() == 3 * 14 * 14


def test_block_mask_is_the_union_of_its_blocks():
    generator = torch.Generator().manual_seed(0)
    mask = block_mask(50, 28, blocks=3, block=0.25, generator=generator)
    side = 7
    areas = mask.sum((1, 2, 3))
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (areas >= side * side).all() and (areas <= 3 * side * side).all()
    # redraw the same corners and rebuild the union by hand
    generator = torch.Generator().manual_seed(0)
    top = torch.randint(0, 28 - side + 1, (50, 3, 1, 1), generator=generator)
    left = torch.randint(0, 28 - side + 1, (50, 3, 1, 1), generator=generator)
    expected = torch.zeros(50, 1, 28, 28)
    for image in range(50):
        for block in range(3):
            t, l = int(top[image, block]), int(left[image, block])
            expected[image, 0, t:t + side, l:l + side] = 1
    assert torch.equal(mask, expected)


def test_overlap_weights_are_one_in_the_hole_and_ten_on_a_band_around_it():
    mask = center_mask(1, 10, hole=0.4)                                             # rows and columns 3..6
    weights = overlap_weights(mask, overlap=1, overlap_weight=10)[0, 0]
    assert torch.equal(weights[3:7, 3:7], torch.ones(4, 4))
    band = torch.zeros(10, 10, dtype=torch.bool); band[2:8, 2:8] = True; band[3:7, 3:7] = False
    assert (weights[band] == 10).all() and band.sum() == 20
    outside = torch.ones(10, 10, dtype=torch.bool); outside[2:8, 2:8] = False
    assert (weights[outside] == 0).all()
    assert torch.equal(overlap_weights(mask, overlap=0), mask)


def test_context_encoder_input_hides_the_hole_and_keeps_the_rest(images):
    method = build('context_encoder')
    torch.manual_seed(0)
    masked, target, mask = method.make_views(images)
    assert torch.equal(mask, center_mask(len(images), 28))
    assert (masked[mask.bool().expand_as(masked)] == 0).all()                       # the hole holds the mean (0)
    keep = ~mask.bool().expand_as(masked)
    assert torch.equal(masked[keep], target[keep])                                  # everything else is untouched


@pytest.mark.parametrize('mask_kind', ['center', 'blocks'])
def test_inpainting_loss_ignores_pixels_outside_the_predicted_region(mask_kind, images):
    method = build('context_encoder', mask=mask_kind)
    torch.manual_seed(0)
    outputs = method(*method.make_views(images))
    weights = overlap_weights(outputs['mask'], method.overlap, method.overlap_weight)
    loss = method.loss(outputs)
    changed = dict(outputs, reconstruction=outputs['reconstruction'] + 100 * (weights == 0))   # scribble outside
    assert torch.allclose(method.loss(changed), loss)
    changed = dict(outputs, reconstruction=outputs['reconstruction'] + outputs['mask'])          # move the hole
    assert not torch.allclose(method.loss(changed), loss)
    # with no overlap band, only the hidden pixels themselves count
    plain = overlap_weights(outputs['mask'], overlap=0)
    base = inpainting_loss(outputs['reconstruction'], outputs['target'], plain)
    visible = outputs['reconstruction'] + 100 * (1 - outputs['mask'])
    assert torch.allclose(inpainting_loss(visible, outputs['target'], plain), base)


def test_context_encoder_reconstructs_at_the_input_size(images):
    for size, channels in ((28, 1), (32, 3)):
        method = build('context_encoder', size=size, channels=channels, mean=MEAN * channels, std=STD * channels)
        x = torch.zeros(2, channels, size, size, dtype=torch.uint8)
        outputs = method(*method.make_views(x))
        assert outputs['reconstruction'].shape == (2, channels, size, size)


def test_adversarial_term_trains_both_players_without_crosstalk(images):
    method = build('context_encoder', adversarial=0.001)
    outputs = method(*method.make_views(images))
    adversarial = method.adversarial_loss(outputs)
    adversarial.backward()
    # the discriminator's gradient must come from its own loss only: recompute it from that loss alone
    own = {name: p.grad.clone() for name, p in method.discriminator.named_parameters()}
    method.zero_grad()
    mask, target = outputs['mask'], outputs['target']
    filled = (target * (1 - mask) + outputs['reconstruction'] * mask).detach()
    real, fake = method.discriminator(target), method.discriminator(filled)
    discriminator_only = (torch.nn.functional.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                          + torch.nn.functional.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    discriminator_only.backward()
    for name, p in method.discriminator.named_parameters(): assert torch.allclose(p.grad, own[name], atol=1e-6), name
    with pytest.raises(UsageError): build('context_encoder', adversarial=1.5)
    with pytest.raises(UsageError): build('context_encoder', mask='circle')


# Counting ------------------------------------------------------------------------------------------------------

def test_tiles_are_the_four_quarters_in_reading_order(images):
    x = images.float()
    tiles = split_tiles(x)
    assert tiles.shape == (16, 4, 1, 14, 14)
    assert torch.equal(tiles[:, 0], x[..., :14, :14]) and torch.equal(tiles[:, 1], x[..., :14, 14:])
    assert torch.equal(tiles[:, 2], x[..., 14:, :14]) and torch.equal(tiles[:, 3], x[..., 14:, 14:])
    assert downsample(x).shape == (16, 1, 14, 14)


def test_downsample_is_area_or_bilinear_per_image():
    x = torch.rand(64, 1, 8, 8)
    out = downsample(x, torch.Generator().manual_seed(0))
    area = torch.nn.functional.interpolate(x, size=4, mode='area')
    bilinear = torch.nn.functional.interpolate(x, size=4, mode='bilinear', align_corners=False)
    is_area = (out == area).flatten(1).all(1); is_bilinear = (out == bilinear).flatten(1).all(1)
    assert (is_area | is_bilinear).all() and is_area.any() and is_bilinear.any()


def test_counting_shapes_and_loss(images):
    method = build('counting')
    whole, tiles = method.make_views(images)
    assert whole.shape == (16, 1, 14, 14) and tiles.shape == (16, 4, 1, 14, 14)
    outputs = method(whole, tiles)
    assert outputs['whole'].shape == (16, 256) and outputs['tiles'].shape == (16, 4, 256)
    assert outputs['features'].shape == (16, 256) and (outputs['whole'] >= 0).all()
    # the loss is the contrastive counting loss with y = the next image
    total = outputs['tiles'].sum(1)
    expected = ((outputs['whole'] - total).pow(2).sum(1)
                + torch.relu(10 - (outputs['whole'].roll(1, 0) - total).pow(2).sum(1))).mean()
    assert torch.allclose(method.loss(outputs), expected)
    # counts that add up cost nothing when y is far away; zero counts cost the margin only with the contrastive term
    parts = torch.rand(5, 4, 3)
    assert counting_loss(parts.sum(1), parts, parts.sum(1) + 10) == 0
    zeros = torch.zeros(5, 3)
    assert counting_loss(zeros, torch.zeros(5, 4, 3), zeros) == 10
    assert counting_loss(zeros, torch.zeros(5, 4, 3), None) == 0


# Selfie ---------------------------------------------------------------------------------------------------------

def test_patches_come_in_reading_order():
    x = torch.arange(2 * 1 * 8 * 8.).view(2, 1, 8, 8)
    patches = to_patches(x, 4)
    assert patches.shape == (2, 16, 1, 2, 2)
    assert torch.equal(patches[0, 5], x[0, :, 2:4, 2:4]) and torch.equal(patches[1, 15], x[1, :, 6:8, 6:8])


def test_selfie_label_points_at_the_patch_that_was_masked(images):
    patches = to_patches(images.float(), 4)[..., :7, :7]                            # (16, 16, 1, 7, 7)
    plan = selfie_task(16, 16, 4, generator=torch.Generator().manual_seed(0))
    candidates = take(patches, plan['candidates'])                                  # what the network chooses from
    chosen = take(candidates, plan['labels'])                                       # the candidate each label names
    assert torch.equal(chosen, take(patches, plan['masked']))
    # the masked and visible positions split the grid; the candidates are a shuffle of the masked ones
    for image in range(16):
        masked, visible = set(plan['masked'][image].tolist()), set(plan['visible'][image].tolist())
        assert not masked & visible and masked | visible == set(range(16)) and len(masked) == 4
        assert sorted(plan['candidates'][image].tolist()) == sorted(masked)
    # the order is really shuffled somewhere, so the label is not just the rank
    assert (plan['labels'] != torch.arange(4)).any()


def test_selfie_views_and_loss(images):
    method = build('selfie')
    patches, visible, candidates, masked, labels = method.make_views(images)
    assert patches.shape == (16, 16, 1, 8, 8) and visible.shape == (16, 12) and labels.shape == (16, 4)
    assert torch.equal(take(candidates[..., None], labels)[..., 0], masked)
    outputs = method(patches, visible, candidates, masked, labels)
    assert outputs['queries'].shape == (16, 4, 128) and outputs['candidates'].shape == (16, 4, 128)
    assert outputs['features'].shape == (16, 256)
    # a perfect scorer, each query equal to its right candidate and the candidates far apart, has near-zero loss
    apart = (torch.eye(4) * 50).expand(16, 4, 4)
    assert selfie_loss(take(apart, labels), apart, labels) < 1e-3
    assert selfie_loss(take(apart, labels.roll(1, 1)), apart, labels) > 100      # and a wrong one pays
    with pytest.raises(UsageError): build('selfie', masked=16)


def test_selfie_context_never_sees_the_masked_patches(images):
    "Changing the masked patches must not change u (the queries); it changes only the candidates."
    method = build('selfie').eval()
    patches, visible, candidates, masked, labels = method.make_views(images)
    outputs = method(patches, visible, candidates, masked, labels)
    scribbled = patches.clone()
    scribbled[torch.arange(16)[:, None], masked] = 5.0
    # batch norm in eval mode: each patch is encoded independently of the others
    changed = method(scribbled, visible, candidates, masked, labels)
    assert torch.allclose(changed['queries'], outputs['queries'], atol=1e-5)
    assert not torch.allclose(changed['candidates'], outputs['candidates'])
