"""Every widget of `sslcourse.widgets` at the Python level: set a control's value (which runs its observers at once), and
check that what the widget shows changed the way it should; the pure render functions are checked against the
library they draw. The method panel trains one short epoch synchronously, and a threaded run is stopped early."""
import math
import re
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sslcourse.augment import ViewPipeline
from sslcourse.data import get_data
from sslcourse.models import create_encoder
from sslcourse import widgets as W


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    "Every test here is a tiny workload: one torch thread (see conftest)."
    yield


@pytest.fixture(scope='module')
def data():
    return get_data(limit=10)


@pytest.fixture(scope='module')
def panel_data():
    return get_data(limit=20)  # 200 images: 180 train after the kNN monitor's validation split


def _number(pattern: str, text: str) -> float:
    return float(re.search(pattern, text).group(1))


# --- the pattern ---------------------------------------------------------------------------------------------------

def test_figure_widget_redraws_on_every_control():
    calls = []
    def render(offset, value):
        calls.append(value)
        figure = W.Figure(figsize=(2, 2)); ax = figure.subplots(); ax.plot([0, 1], [offset, value])
        figure.suptitle(f'value {value}')
        return figure
    box = W.figure_widget(render, dict(value=W.widgets.IntSlider(1, min=0, max=5)), offset=0)
    before = W.shown_png(box)
    box.controls['value'].value = 4
    assert calls == [1, 4] and W.shown_png(box) != before and box.figure._suptitle.get_text() == 'value 4'
    assert box.output.outputs[0]['output_type'] == 'display_data'
    # the notebook output carries the live widget and a still of the figure now shown (the website shows the still)
    bundle = box._repr_mimebundle_()
    assert 'application/vnd.jupyter.widget-view+json' in bundle and bundle['image/png'] == W.shown_png(box)


# --- 1. augmentation explorer ------------------------------------------------------------------------------------

def test_jitter_strength_is_simclrs_s():
    assert W.jitter_strengths(1.0) == dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)
    defaults = ViewPipeline(28, (0.5,), (0.25,))
    assert W.jitter_strengths(0.5) == pytest.approx(dict(brightness=defaults.brightness, contrast=defaults.contrast,
                                                         saturation=defaults.saturation, hue=defaults.hue))


def test_blur_sigma_is_a_view_pipeline_field():
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    same = lambda pipeline: pipeline(images, torch.Generator().manual_seed(3))
    # the default range is gaussian_blur's, so a recipe that never names it is unchanged
    assert ViewPipeline(64, (0.5,) * 3, (0.25,) * 3).blur_sigma == (0.1, 2.0)
    # a wider sigma removes more detail: less total variation
    variation = lambda x: (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    narrow = ViewPipeline(64, (0.5,) * 3, (0.25,) * 3, blur=1.0, jitter=0.0, grayscale=0.0, blur_sigma=(0.1, 0.1))
    wide = ViewPipeline(64, (0.5,) * 3, (0.25,) * 3, blur=1.0, jitter=0.0, grayscale=0.0, blur_sigma=(9.0, 9.0))
    assert variation(same(wide)) < 0.7 * variation(same(narrow))


def test_view_explorer_follows_its_strength_controls(data):
    box = W.view_explorer(data, n=3)
    assert set(box.controls) >= {'scale', 'ratio', 'strength', 'jitter', 'blur', 'blur_sigma', 'flip', 'grayscale'}
    before = W.shown_png(box)
    box.controls['strength'].value = 1.0
    assert W.shown_png(box) != before and 'jitter s = 1.00' in box.figure._suptitle.get_text()
    box.controls['scale'].value = (0.5, 0.8)
    box.controls['ratio'].value = (0.5, 2.0)
    title = box.figure._suptitle.get_text()
    assert 'crop area 50%–80%' in title and 'aspect ratio 0.50–2.00' in title and len(box.figure.axes) == 3 * 3
    # the old keyword still works
    assert 'crop area 90%–100%' in W.render_views(data, n=2, min_scale=0.9)._suptitle.get_text()


# --- 2. temperature explorer -------------------------------------------------------------------------------------

def test_temperature_moves_the_loss_the_softmax_and_the_gradient_weights():
    z1, z2 = W.temperature_batch()
    stats = {t: W.temperature_stats(z1, z2, t) for t in (0.05, 0.2, 1.0, 5.0)}
    losses = [stats[t]['loss'] for t in (0.05, 0.2, 1.0, 5.0)]
    assert losses == sorted(losses) and losses[-1] < math.log(2 * len(z1) - 1)  # positives nearest: higher τ, higher loss
    hard = lambda s: s['share'][s['similarity'].argsort(descending=True)[:7]].sum()  # 6 hard negatives (+ positive's 0)
    assert hard(stats[0.05]) > 0.9 and hard(stats[5.0]) < 0.3
    # the weights are the gradient of anchor 0's loss with respect to its normalised embedding
    z = F.normalize(torch.cat([z1, z2]), dim=1); anchor = z[0].clone().requires_grad_()
    F.cross_entropy((z[1:] @ anchor / 0.2)[None], torch.tensor([len(z1) - 1])).backward()
    expected = (stats[0.2]['weight'][:, None] * z[stats[0.2]['others']]).sum(0)
    assert torch.allclose(anchor.grad, expected, atol=1e-5)


def test_temperature_slider_redraws_with_the_loss_it_shows():
    box = W.temperature_explorer()
    loss_at = lambda: _number(r'loss ([\d.]+)', box.figure.axes[0].get_title())
    high = loss_at(); before = W.shown_png(box)
    box.controls['temperature'].value = 0.05
    assert W.shown_png(box) != before and loss_at() < high
    assert len(box.figure.axes) == 3


# --- 3. Yosinski's curves ----------------------------------------------------------------------------------------

def test_stored_layer_transfer_results_match_lesson_12():
    results = W.read_layer_transfer()
    assert set(results) == {'random', 'dissimilar'}
    assert np.mean(results['random']['base']['B']) == pytest.approx(0.823, abs=5e-4)
    assert results['random']['arms']['AnB']['7'] == [0.764] and results['dissimilar']['arms']['RnB']['7'] == [0.561]


def test_layer_transfer_toggles_and_split():
    box = W.layer_transfer_explorer()
    legend = lambda: [text.get_text() for text in box.figure.axes[0].get_legend().get_texts()]
    assert {'BnB', 'BnB+', 'AnB', 'AnB+', 'RnB'} <= set(legend())
    before = W.shown_png(box)
    box.controls['RnB'].value = False
    box.controls['BnB'].value = False
    assert W.shown_png(box) != before and 'RnB' not in legend() and 'BnB' not in legend() and 'AnB' in legend()
    box.controls['split'].value = 'dissimilar'
    assert box.figure.axes[0].get_title().startswith('dissimilar split')
    box.controls['relative'].value = True
    assert 'points' in box.figure.axes[0].get_ylabel()


# --- 4. block/channel picker -------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def encoders(data):
    torch.manual_seed(0)
    return {'a': create_encoder('convnet', 1), 'b': create_encoder('convnet', 1)}


def test_channel_patches_are_inspections_top_patches(encoders, data):
    from sslcourse.experiments.what_transfers import top_patches
    images = data.test.images[:60]
    cache = {}
    for block, channel in ((0, 3), (2, 7)):
        found = W.channel_patches(encoders['a'], images, data, block, channel, k=9, cache=cache)
        patches, field = top_patches(encoders['a'], images, data, block, [channel], k=9)
        assert found['field'] == field and torch.allclose(found['patches'], patches[0], equal_nan=True)


def test_channel_picker_follows_encoder_block_and_channel(encoders, data):
    head = nn.Linear(256, data.num_classes)
    box = W.channel_picker(encoders, data.test.images[:60], data, heads={'b': head})
    before = W.shown_png(box)
    box.controls['channel'].value = 5
    assert W.shown_png(box) != before and 'block 0, channel 5 of 32' in box.figure._suptitle.get_text()
    box.controls['block'].value = 3
    assert box.controls['channel'].max == 255 and 'of 256' in box.figure._suptitle.get_text()
    assert len(box.figure.axes) == 2
    box.controls['encoder'].value = 'b'                  # a head: the CAM panel appears
    assert len(box.figure.axes) == 3 and 'CAM' in box.figure.axes[2].get_title()


# --- 5. pretext knobs --------------------------------------------------------------------------------------------

def test_relpos_corners_are_patch_pairs_geometry(data):
    from sslcourse.methods.pretext.relpos import patch_pairs, NEIGHBOURS
    image = data.train.images[:1].float()
    corners = W.relpos_corners(28, 8, 2, 0)
    _, _, labels, pairs = patch_pairs(image.expand(64, -1, -1, -1), 8, 2, 0, torch.Generator().manual_seed(0))
    for label, pair in zip(labels.tolist(), pairs):
        assert torch.equal(pair[0], corners[0]) and torch.equal(pair[1], corners[label + 1])
    assert torch.equal(corners[2] - corners[0], torch.tensor(NEIGHBOURS[1]) * 10)


def test_relpos_explorer_gap_and_jitter(data):
    box = W.relpos_explorer(data.train.images[0])
    before = W.shown_png(box)
    box.controls['jitter'].value = 0
    box.controls['gap'].value = 1
    assert W.shown_png(box) != before and 'gap 1 px' in box.figure._suptitle.get_text()
    assert 'here: 1–1 px' in box.figure.axes[0].get_title()   # no jitter: every gap is exactly the gap
    box.controls['gap'].value = 4                              # 3 × 8 + 2 × 4 > 28
    assert 'does not fit' in box.figure._suptitle.get_text()


def test_hamming_curve_is_the_greedy_set_for_every_size():
    from sslcourse.methods.pretext.toolkit import hamming_permutations, hamming_distances, minimum_hamming_distance
    assert torch.equal(hamming_permutations(20), hamming_permutations(60)[:20])  # prefixes of one greedy search
    curve = W.hamming_curve(60)
    for count in (2, 20, 60):
        chosen = hamming_permutations(count)
        distances = hamming_distances(chosen, chosen).float()
        assert curve['minimum'][count - 2] == minimum_hamming_distance(chosen)
        assert curve['mean'][count - 2] == pytest.approx(float(distances.sum() / (count * (count - 1))))


def test_jigsaw_explorer_set_size_and_permutation(data):
    box = W.jigsaw_explorer(data.train.images[1], max_permutations=60)
    box.controls['permutations'].value = 10
    assert box.controls['index'].max == 9 and 'P = 10' in box.figure.axes[0].get_title()
    before = W.shown_png(box)
    box.controls['index'].value = 7
    assert W.shown_png(box) != before and box.figure.axes[2].get_title().startswith('permutation 7')


def test_context_encoder_hole_size(data):
    box = W.context_encoder_explorer(data, n=3)
    hidden = lambda: _number(r'(\d+)% of the pixels', box.figure._suptitle.get_text())
    large = hidden()
    box.controls['hole'].value = 0.25
    assert hidden() < large and '7×7-px hole' in box.figure._suptitle.get_text()
    box.controls['mask'].value = 'blocks'
    assert 'blocks of 7 px' in box.figure._suptitle.get_text()


def test_colorization_temperature_and_rebalancing():
    from sslcourse.methods.pretext.color import ab_bins, smoothing_matrix
    centers = ab_bins(); smoothing = smoothing_matrix(centers)
    images = torch.full((2, 3, 8, 8), 128, dtype=torch.uint8)
    logits = torch.full((2, len(centers), 2, 2), -20.0)
    red = int(((centers - torch.tensor([60.0, 0.0])) ** 2).sum(1).argmin())
    green = int(((centers - torch.tensor([-60.0, 0.0])) ** 2).sum(1).argmin())
    logits[:, red], logits[:, green] = 1.0, 0.5       # two modes: the mean lies between them, near grey
    counts = torch.rand(len(centers), generator=torch.Generator().manual_seed(0)) ** 4 * 100
    chroma = lambda figure: _number(r'mean chroma ([\d.]+)', figure.subfigs[0]._suptitle.get_text())
    span = lambda figure: _number(r'weights span ([\d.]+)', figure.subfigs[1].axes[0].get_title())
    render = lambda t, mix: W.render_colorization(images, logits, centers, counts, smoothing, t, mix)
    assert chroma(render(0.05, 0.5)) > 50 > 20 > chroma(render(1.0, 0.5))
    assert span(render(0.38, 0.1)) > span(render(0.38, 0.5)) > span(render(0.38, 0.9)) > 1
    assert span(render(0.38, 1.0)) == pytest.approx(1.0)


def test_colorization_explorer_sliders():
    from sslcourse.methods.pretext.color import photo_patches
    from sslcourse.methods.pretext.colorization import Colorization
    colour = photo_patches(32, 8)
    torch.manual_seed(0)
    method = Colorization(create_encoder('convnet', 3), colour.size, colour.mean, colour.std)
    box = W.colorization_explorer(method, colour.test.images[:4])
    before = W.shown_png(box)
    box.controls['temperature'].value = 1.0
    assert W.shown_png(box) != before and 'T = 1.00' in box.figure.subfigs[0]._suptitle.get_text()
    box.controls['rebalance'].value = 1.0
    assert 'λ = 1.00' in box.figure.subfigs[1].axes[0].get_title()


# --- 6. the method panel -----------------------------------------------------------------------------------------

def test_method_options_follow_the_constructor():
    assert W.method_options('simclr') == {'temperature': 0.2}
    assert W.method_options('byol') == {'base_momentum': 0.99}


def test_method_panel_dom_hooks_and_knobs(panel_data):
    panel = W.method_panel(panel_data, device='cpu')
    assert 'sslcourse-method-panel' in panel._dom_classes and 'sslcourse-results' in panel.table._dom_classes
    assert (panel.method.description, panel.epochs.description) == ('method', 'epochs')
    assert (panel.train_button.description, panel.stop_button.description) == ('train', 'stop')
    assert panel.method.value == 'simclr' and [c.description for c in panel.options.children] == ['temperature']
    panel.method.value = 'byol'
    assert [c.description for c in panel.options.children] == ['EMA base']
    assert max(panel.bs.options) <= 0.9 * len(panel_data.train)


def test_method_panel_trains_one_epoch_and_adds_a_row(panel_data):
    panel = W.method_panel(panel_data, device='cpu')
    panel.epochs.value, panel.bs.value = 1, 64
    panel.knobs['temperature'].value = 0.5
    runs, before = len(W.PANEL_RUNS), W.shown_png(panel)
    panel.train(wait=True)
    assert panel.error is None, panel.error
    assert len(W.PANEL_RUNS) == runs + 1
    row = W.PANEL_RUNS[-1]
    assert row['method'] == 'simclr' and row['status'] == 'done' and row['epochs'] == 1
    assert math.isfinite(row['loss']) and 0 < row['knn'] <= 1 and 'temperature 0.5' in row['settings']
    assert panel.progress.value == panel.progress.max > 0
    assert W.shown_png(panel) != before                    # the live plot was redrawn after the epoch
    assert panel.table.value.count('<tr>') == len(W.PANEL_RUNS) + 1 and 'simclr' in panel.table.value
    assert not panel.train_button.disabled and panel.stop_button.disabled


def test_stop_ends_a_threaded_run_early(panel_data):
    panel = W.method_panel(panel_data, device='cpu')
    panel.epochs.value = 30
    thread = panel.train()
    assert thread.is_alive() and panel.train_button.disabled and not panel.stop_button.disabled
    deadline = time.time() + 60
    while panel.running and panel.progress.value < 1 and time.time() < deadline: time.sleep(0.005)
    panel.stop_button.click()
    thread.join(60)
    assert not thread.is_alive() and panel.error is None, panel.error
    row = W.PANEL_RUNS[-1]
    assert row['status'] == 'stopped' and row['epochs'] < 30 and math.isfinite(row['loss'])
    assert 'stopped' in panel.table.value and 'stopped' in panel.status.value
    assert not panel.train_button.disabled and panel.stop_button.disabled


def test_a_method_that_cannot_run_shows_why(panel_data):
    panel = W.method_panel(panel_data, device='cpu')
    panel.method.value = 'colorization'                    # needs colour images
    runs = len(W.PANEL_RUNS)
    panel.train(wait=True)
    assert panel.error is not None and 'colour' in panel.status.value and len(W.PANEL_RUNS) == runs
    assert not panel.train_button.disabled
