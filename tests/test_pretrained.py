"""The offline ImageNet weights (sslcourse.experiments.pretrained): every key mapped with its shape checked, and predictions on
scikit-learn's two photographs that only genuine ImageNet weights, preprocessed the way they expect, can make."""
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from timm.models._efficientnet_blocks import InvertedResidual

from sslcourse.experiments import pretrained
from sslcourse.core import UsageError


pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


@pytest.fixture(scope='module')
def state_dict():
    return pretrained.load_lukemelas_state_dict()


@pytest.fixture(scope='module')
def model():
    return pretrained.create_pretrained()


@pytest.fixture(scope='module')
def predictions(model):
    "Top-5 for each scikit-learn sample photograph, by file name."
    photos = {path.rsplit('/', 1)[-1]: Image.open(path) for path in load_sample_images().filenames}
    return dict(zip(photos, pretrained.predict_topk(model, list(photos.values()), k=5)))


def describe(top) -> str:
    return ', '.join(f'{name} {probability:.3f}' for name, probability in top)


def test_china_top5_has_palace_or_bell_cote(predictions):
    top = predictions['china.jpg']
    assert {name for name, _ in top} & {'palace', 'bell cote'}, f'china.jpg top-5: {describe(top)}'


def test_flower_top1_is_daisy(predictions):
    top = predictions['flower.jpg']
    assert top[0][0] == 'daisy', f'flower.jpg top-5: {describe(top)}'


def test_every_timm_key_is_mapped_with_its_shape(model, state_dict):
    expected = model.state_dict()
    converted = pretrained.convert_state_dict(model, state_dict)
    assert set(converted) == set(expected)  # parameters and batch-norm buffers alike
    assert all(converted[key].shape == expected[key].shape for key in expected)
    assert len(converted) == len(state_dict)  # nothing in the checkpoint is left over
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_loaded_values_are_the_checkpoint_values(model, state_dict):
    # the roles whose names differ most between the two layouts
    checks = {'bn1.running_var': '_bn0.running_var',
              'blocks.0.0.conv_pw.weight': '_blocks.0._project_conv.weight',
              'blocks.1.0.conv_pw.weight': '_blocks.1._expand_conv.weight',
              'blocks.5.3.bn3.running_mean': '_blocks.14._bn2.running_mean',
              'classifier.bias': '_fc.bias'}
    loaded = model.state_dict()
    for timm_key, lukemelas_key in checks.items():
        assert torch.equal(loaded[timm_key], state_dict[lukemelas_key]), timm_key


def test_a_wrong_role_mapping_is_refused_with_the_key_named(model, state_dict, monkeypatch):
    # swapping expand and project in inverted residuals puts (96, 16) weights into (24, 96) slots
    swapped = dict(pretrained.TIMM_BLOCK_LAYERS[InvertedResidual])
    swapped['expand'], swapped['project'] = swapped['project'], swapped['expand']
    monkeypatch.setitem(pretrained.TIMM_BLOCK_LAYERS, InvertedResidual, swapped)
    with pytest.raises(pretrained.WeightMappingError, match=r'blocks\.1\.0\.conv_pwl\.weight: shape'):
        pretrained.convert_state_dict(model, state_dict)


def test_missing_and_misshapen_checkpoint_tensors_are_all_listed(model, state_dict):
    broken = dict(state_dict)
    del broken['_blocks.3._bn1.running_var']
    broken['_fc.weight'] = broken['_fc.weight'][:10]
    with pytest.raises(pretrained.WeightMappingError) as error:
        pretrained.convert_state_dict(model, broken)
    assert '_blocks.3._bn1.running_var is missing' in str(error.value)
    assert 'classifier.weight: shape (1000, 1280)' in str(error.value)


def test_other_class_counts_get_a_fresh_head():
    model = pretrained.create_pretrained(num_classes=7)
    assert model.classifier.out_features == 7
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 7)


def test_preprocessing_matches_the_weights():
    assert pretrained.normalisation(pretrained.create_pretrained(num_classes=0)) == (pretrained.MEAN, pretrained.STANDARD_DEVIATION)
    grey = pretrained.imagenet_transform()(Image.new('RGB', (640, 427), color=(127, 127, 127)))
    assert grey.shape == (3, 224, 224) and grey.abs().max() < 0.01  # mid-grey maps to 0 under (x - 127) / 128
    names = pretrained.imagenet_class_names()
    assert len(names) == 1000 and names[0] == 'tench' and names[985] == 'daisy'


def test_unknown_name_is_one_line_usage_error():
    with pytest.raises(UsageError) as error:
        pretrained.create_pretrained('no_such_network')
    assert '\n' not in str(error.value) and 'efficientnet_lite0' in str(error.value)
