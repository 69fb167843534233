"Motion (lesson 57): the clip generator's recorded transforms, order labels, tracked points, the ranking loss."
import math

import pytest
import torch
import torch.nn.functional as F

from sslcourse.core import UsageError
from sslcourse.models import convnet
from sslcourse.experiments.motion import (make_clips, motion_path, render_garments, warp, relative_transform, track_points,
                              to_normalised, to_pixels, order_triplets, tracking_pairs, crop, ranking_loss,
                              train_order, train_tracking, order_accuracy, tracking_retrieval, ORDERS)

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


def blobs(n=6, size=28):
    "Smooth garments (Gaussian blobs of different widths and places), so that bilinear resampling is nearly exact."
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing='ij')
    centres = torch.linspace(11, 16, n)
    images = [200 * torch.exp(-((xs - c) ** 2 + (ys - 0.8 * c) ** 2) / (2 * (3 + i / 2) ** 2))
              for i, c in enumerate(centres)]
    return torch.stack(images)[:, None].round().to(torch.uint8)


def test_same_seed_same_clips_other_seed_other_clips(images):
    a, b = make_clips(images, seed=3), make_clips(images, seed=3)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.theta, b.theta)
    assert not torch.equal(make_clips(images, seed=4).theta, a.theta)
    assert a.frames.shape == (len(images), 6, 1, 32, 32) and a.frames.dtype == torch.uint8


@pytest.mark.parametrize('source,target', [(0, 1), (2, 3), (4, 5), (0, 3), (5, 1)])
def test_frame_is_the_warp_of_another_by_the_recorded_transform(source, target):
    clips_images = blobs()
    clips = make_clips(clips_images, strength=1.0, seed=0)
    layers = render_garments(clips_images, clips.theta, 32)
    moved = warp(layers[:, source], relative_transform(clips.theta, source, target))
    error = (moved - layers[:, target]).abs().mean()
    assert error < 0.6  # grey levels, out of 255: two bilinear resamplings of a smooth blob
    assert error < 0.2 * (layers[:, source] - layers[:, target]).abs().mean()  # far below "no motion"


def test_real_garments_follow_the_recorded_transform(images):
    clips = make_clips(images, strength=1.0, seed=1)
    layers = render_garments(images, clips.theta, 32)
    for t in range(5):
        step = relative_transform(clips.theta, t, t + 1)
        right = (warp(layers[:, t], step) - layers[:, t + 1]).abs().mean()
        wrong = (warp(layers[:, t], step.roll(1, 0)) - layers[:, t + 1]).abs().mean()
        assert right < 0.5 * wrong


def test_frames_composite_garment_over_background(images):
    clips = make_clips(images, strength=0.7, seed=2)
    layers = render_garments(images, clips.theta, 32)
    difference = clips.frames.float() - layers
    assert difference.min() >= -0.5  # the background only adds light, where the cloth lets it through
    bright = layers > 250  # solid cloth: the frame shows the garment; at most 5/255 of a background ≤ 90 shows
    assert difference[bright].max() <= 0.5 + 5 / 255 * 90
    dark = layers < 1  # no cloth: the background, a smooth field in [20, 90]
    assert clips.frames[dark].min() >= 20 - 1 and clips.frames[dark].max() <= 90 + 1


def test_strength_zero_makes_still_clips(images):
    clips = make_clips(images, strength=0.0, seed=0)
    assert torch.equal(clips.frames, clips.frames[:, :1].expand_as(clips.frames))


def test_points_track_with_the_forward_map():
    "track_points against the forward map written out: x = theta_target⁻¹ · theta_source · p, by hand per clip."
    theta = motion_path(5, 6, 1.5, generator=torch.Generator().manual_seed(0))
    points = torch.rand(5, 2, generator=torch.Generator().manual_seed(1)) * 31
    for target in range(6):
        got = track_points(theta, points, 0, target, 32)
        for n in range(5):
            p = torch.tensor([*to_normalised(points[n], 32).tolist(), 1.0])
            g = theta[n, 0] @ p
            inverse = torch.linalg.inv(torch.cat([theta[n, target], torch.tensor([[0., 0., 1.]])]))
            expected = to_pixels((inverse @ torch.tensor([*g.tolist(), 1.0]))[:2], 32)
            assert torch.allclose(got[n], expected, atol=1e-4)
    assert torch.allclose(track_points(theta, points, 2, 2, 32), points, atol=1e-4)


def test_tracked_patches_show_the_same_garment_point():
    "Patches cut from the garment layer at the tracked centre match the anchor far better than at the start point."
    images = blobs()
    clips = make_clips(images, strength=1.0, seed=0)
    anchors, tracked, start, end, later, clip = tracking_pairs(clips, 40, 12, torch.Generator().manual_seed(0), later=4)
    assert (later == 4).all()
    layers = render_garments(images, clips.theta, 32)[clip]
    template = crop(layers[:, 0], start, 12)
    at_tracked = (crop(layers[:, 4], end, 12) - template).abs().mean()
    at_start = (crop(layers[:, 4], start, 12) - template).abs().mean()
    assert at_tracked < 0.5 * at_start  # the patch also turns and zooms about its centre, so not much below
    value = lambda layer, centre: crop(layer, centre, 1).flatten()  # the layer at one sub-pixel point
    point_error = (value(layers[:, 4], end) - value(layers[:, 0], start)).abs().mean()
    assert point_error < 1.0 and point_error < 0.1 * (value(layers[:, 4], start) - value(layers[:, 0], start)).abs().mean()
    frames = clips.frames[clip].float()
    assert torch.allclose(anchors, crop(frames[:, 0], start, 12)) and torch.allclose(tracked, crop(frames[:, 4], end, 12))


def test_crop_at_integer_centres_is_slicing():
    frames = torch.rand(3, 1, 32, 32) * 255
    centres = torch.tensor([[10.5, 12.5], [16.5, 16.5], [7.5, 20.5]])  # an even patch centred between pixels
    patches = crop(frames, centres, 8)
    for n, (x, y) in enumerate(centres.tolist()):
        x0, y0 = int(x - 3.5), int(y - 3.5)
        assert torch.allclose(patches[n, 0], frames[n, 0, y0:y0 + 8, x0:x0 + 8], atol=1e-3)


def test_order_labels_match_the_applied_permutation(images):
    clips = make_clips(images, frames=7, seed=0)
    for gap in (1, 2, 3):
        frames, labels, orders, chosen, clip = order_triplets(clips, 3000, torch.Generator().manual_seed(gap), gap)
        assert torch.equal(labels, (orders[:, 1] == 1).long())
        assert torch.equal(frames, clips.frames[clip[:, None], chosen.gather(1, orders)])
        assert (chosen.diff(dim=1) >= gap).all() and (chosen >= 0).all() and (chosen < 7).all()
        assert 0.45 < labels.float().mean() < 0.55
        valid = {tuple(o) for o in ORDERS[:2].tolist()}
        assert all((tuple(o) in valid) == bool(l) for o, l in zip(orders.tolist(), labels.tolist()))
        assert len({tuple(o) for o in orders.tolist()}) == 6  # every order is drawn


def ranking_loop(anchor, positive, margin, hardest):
    costs = []
    for i in range(len(anchor)):
        row = []
        for j in range(len(anchor)):
            if j == i: continue
            d_pos = 1 - F.cosine_similarity(anchor[i], positive[i], dim=0).item()
            d_neg = 1 - F.cosine_similarity(anchor[i], positive[j], dim=0).item()
            row.append(max(0.0, d_pos - d_neg + margin))
        row.sort(reverse=True)
        costs += row[:hardest] if hardest else row
    return sum(costs) / len(costs)


@pytest.mark.parametrize('margin,hardest', [(0.5, None), (0.5, 1), (0.2, 4), (1.0, 8)])
def test_ranking_loss_equals_the_loop(margin, hardest):
    generator = torch.Generator().manual_seed(hardest or 0)
    anchor, positive = torch.randn(9, 6, generator=generator), torch.randn(9, 6, generator=generator)
    assert math.isclose(ranking_loss(anchor, positive, margin, hardest).item(), ranking_loop(anchor, positive, margin, hardest),
                        abs_tol=1e-5)


def test_ranking_loss_of_collapse_is_the_margin_and_of_perfect_pairs_zero():
    same = torch.ones(5, 4)
    assert math.isclose(ranking_loss(same, same, 0.5).item(), 0.5, abs_tol=1e-6)
    eye = torch.eye(5)
    assert ranking_loss(eye, eye, 0.5).item() == 0  # orthogonal negatives at distance 1 > 0 + margin


def test_bad_options_raise_usage_error(images):
    clips = make_clips(images[:4], seed=0)
    with pytest.raises(UsageError, match='at least 3 frames'): make_clips(images, frames=2)
    with pytest.raises(UsageError, match='strength'): make_clips(images, strength=-1)
    with pytest.raises(UsageError, match='8 px'): make_clips(images, size=4)
    with pytest.raises(UsageError, match='no triplet'): order_triplets(clips, 4, gap=3)
    with pytest.raises(UsageError, match='at least 2 pairs'): ranking_loss(torch.ones(1, 3), torch.ones(1, 3))
    with pytest.raises(UsageError, match='hardest'): ranking_loss(torch.ones(3, 3), torch.ones(3, 3), hardest=3)
    encoder = convnet(1, (4, 8))
    with pytest.raises(UsageError, match='steps'): train_order(encoder, clips, 0)
    with pytest.raises(UsageError, match='patch'): train_tracking(encoder, clips, 1, patch=40)
    with pytest.raises(UsageError, match='hardest'): train_tracking(encoder, clips, 1, bs=4, hardest=4)


def test_trainers_run_and_the_tracking_loss_falls(images):
    torch.manual_seed(0)
    clips = make_clips(images, seed=0)
    encoder = convnet(1, (8, 16))
    head, losses = train_order(encoder, clips, 3, bs=8)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert 0 <= order_accuracy(encoder, head, clips, 64) <= 1
    before = tracking_retrieval(lambda p: encoder(p / 255), clips, 16, 12)
    head, losses = train_tracking(encoder, clips, 30, bs=16, patch=12, lr=3e-3, hardest=None)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert 0 <= before <= 1 and 0 <= tracking_retrieval(lambda p: encoder(p / 255), clips, 16, 12) <= 1
