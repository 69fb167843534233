"""Spine 2 of `sslcourse.augment`: crops that honour their scale, antialiased shrinking, and the multi-crop recipes."""
import math

import pytest
import torch

from sslcourse import augment
from sslcourse.core import UsageError
from sslcourse.augment import ViewPipeline, crop_matrices, make_views

CROPS = 10_000


def crop_area_and_aspect(theta):
    "Fraction of the image a crop covers, and its width / height, read back from the matrices."
    width, height = theta[:, 0, 0].abs(), theta[:, 1, 1]
    return width * height, width / height


@pytest.mark.parametrize("scale", [(0.9, 1.0), (0.08, 1.0), (0.05, 0.14), (1.0, 1.0)])
def test_every_crop_area_lies_within_scale(scale):
    theta = crop_matrices(CROPS, scale=scale, generator=torch.Generator().manual_seed(0))
    area, aspect = crop_area_and_aspect(theta)
    assert area.min() >= scale[0] * (1 - 1e-5), (area < scale[0]).float().mean()
    assert area.max() <= scale[1] * (1 + 1e-5)
    # every ratio in (3/4, 4/3) is feasible for every area <= 1, since the range contains 1
    assert aspect.min() >= 3 / 4 * (1 - 1e-5) and aspect.max() <= 4 / 3 * (1 + 1e-5)
    # and the crop stays inside the image
    assert (theta[:, 0, 0].abs() <= 1 + 1e-6).all() and (theta[:, 1, 1] <= 1 + 1e-6).all()
    assert ((theta[:, 0, 2].abs() + theta[:, 0, 0].abs()) <= 1 + 1e-5).all()
    assert ((theta[:, 1, 2].abs() + theta[:, 1, 1]) <= 1 + 1e-5).all()


def test_area_is_uniform_over_scale():
    "Clamping used to pile crops up below the range; the area must be drawn uniformly over it."
    theta = crop_matrices(CROPS, scale=(0.08, 1.0), generator=torch.Generator().manual_seed(1))
    area, _ = crop_area_and_aspect(theta)
    counts = torch.histc(area, bins=4, min=0.08, max=1.0)
    assert (counts - CROPS / 4).abs().max() < 0.05 * CROPS, counts


def test_aspect_within_ratio_whenever_feasible():
    "Wide ratios only: a crop of area a can be at most 1/a wide for its height, so big crops cannot reach 2:1."
    ratio = (1.5, 2.0)
    theta = crop_matrices(CROPS, scale=(0.3, 1.0), ratio=ratio, generator=torch.Generator().manual_seed(2))
    area, aspect = crop_area_and_aspect(theta)
    assert area.min() >= 0.3 * (1 - 1e-5) and area.max() <= 1 + 1e-5
    feasible = area <= 1 / ratio[0]
    assert feasible.any() and (~feasible).any()
    assert aspect[feasible].min() >= ratio[0] * (1 - 1e-5) and aspect[feasible].max() <= ratio[1] * (1 + 1e-5)
    # where the ratio cannot be met, the crop is as wide as it can be: the full width, at the drawn area
    assert torch.allclose(theta[~feasible, 0, 0].abs(), torch.ones(int((~feasible).sum())), atol=1e-5)


def test_bad_scale_is_refused():
    for scale in [(0.0, 1.0), (0.5, 1.2), (0.8, 0.2)]:
        with pytest.raises(UsageError):
            crop_matrices(4, scale=scale)


def plain_pipeline(size, **overrides):
    "A crop-only pipeline at full scale with no flip or colour, so the output is the resized image itself."
    settings = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, jitter=0.0, grayscale=0.0)
    return ViewPipeline(size, (0.0,), (1.0,), **{**settings, **overrides})


def checkerboard(side):
    rows, columns = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return ((rows + columns) % 2).float().view(1, 1, side, side).expand(4, 1, side, side).contiguous()


def test_antialias_removes_aliasing_of_a_checkerboard():
    "A 1-pixel checkerboard shrunk 3x: point sampling keeps full contrast (an alias), a prefilter leaves grey."
    board = checkerboard(36)
    aliased = plain_pipeline(12, antialias=False)(board)
    smooth = plain_pipeline(12, antialias=True)(board)
    assert aliased.std() > 0.4
    assert smooth.std() < 0.02 and (smooth.mean() - 0.5).abs() < 0.02


def test_antialias_keeps_smooth_images():
    side = 64
    position = torch.arange(side).float()
    wave = 0.5 + 0.4 * torch.sin(2 * math.pi * position / side)
    smooth = (wave.view(1, 1, 1, side) * wave.view(1, 1, side, 1)).expand(4, 1, side, side).contiguous()
    plain = plain_pipeline(16, antialias=False)(smooth)
    filtered = plain_pipeline(16, antialias=True)(smooth)
    assert (plain - filtered).abs().max() < 0.03


def test_antialias_leaves_enlarged_crops_alone():
    "Crops smaller than the output (enlarged, not shrunk) must come out exactly as without the option."
    images = torch.rand(16, 3, 28, 28)
    small = dict(scale=(0.05, 0.14), jitter=0.0, grayscale=0.0)
    with_option = ViewPipeline(28, (0.0,) * 3, (1.0,) * 3, antialias=True, **small)
    without = ViewPipeline(28, (0.0,) * 3, (1.0,) * 3, antialias=False, **small)
    generator = lambda: torch.Generator().manual_seed(5)
    assert torch.equal(with_option(images, generator()), without(images, generator()))


def test_antialias_is_per_image():
    "In one batch, a shrunk crop is filtered and an enlarged one is not: the choice is made per image."
    board = checkerboard(36)
    pipeline = plain_pipeline(12, antialias=True, scale=(0.02, 1.0))
    generator = torch.Generator().manual_seed(0)
    theta = crop_matrices(4, pipeline.scale, pipeline.ratio, pipeline.flip, generator=torch.Generator().manual_seed(0))
    views = pipeline(board, generator)
    shrunk = (theta[:, 0, 0].abs() * 36 > 12) | (theta[:, 1, 1] * 36 > 12)
    plain = plain_pipeline(12, antialias=False, scale=(0.02, 1.0))(board, torch.Generator().manual_seed(0))
    for index in range(4):
        assert torch.equal(views[index], plain[index]) != bool(shrunk[index])


def test_swav_and_dino_recipes():
    swav = augment.swav_views(28, (0.5,), (0.25,))
    assert [view.size for view in swav] == [28, 28] + [12] * 6
    assert [view.scale for view in swav] == [(0.14, 1.0)] * 2 + [(0.05, 0.14)] * 6
    dino = augment.dino_views(96, (0.5,) * 3, (0.25,) * 3)
    assert [view.size for view in dino] == [96, 96] + [41] * 8
    assert [view.scale for view in dino] == [(0.4, 1.0)] * 2 + [(0.05, 0.4)] * 8
    first, second, local = dino[0], dino[1], dino[2]
    assert (first.blur, first.solarize, second.blur, second.solarize, local.blur) == (1.0, 0.0, 0.1, 0.2, 0.5)
    assert augment.dino_views(32, (0.5,), (0.25,), local_views=2, local_size=16)[-1].size == 16
    assert not hasattr(augment, "multi_crop_views")


def test_multi_crop_views_have_their_sizes():
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    views = make_views(images, augment.swav_views(28, (0.5,), (0.25,)), torch.Generator().manual_seed(0))
    assert [tuple(view.shape) for view in views] == [(8, 1, 28, 28)] * 2 + [(8, 1, 12, 12)] * 6
    assert all(torch.isfinite(view).all() for view in views)
