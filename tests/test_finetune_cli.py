"""`sslcourse finetune`'s building blocks, through argparse: bad input is one-line `UsageError`s raised before any
training, and a tiny real run writes the JSON record."""
import argparse
import json

import pytest
import torch

from sslcourse.core import UsageError
from sslcourse.experiments.finetune import add_finetune_arguments, run_finetune


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def parse(*argv) -> argparse.Namespace:
    return add_finetune_arguments(argparse.ArgumentParser(prog='sslcourse finetune')).parse_args([str(a) for a in argv])


def usage_error(*argv) -> str:
    with pytest.raises(UsageError) as error:
        run_finetune(parse(*argv))
    message = str(error.value)
    assert '\n' not in message, message
    return message


def test_defaults():
    args = parse()
    assert (args.pretrained, args.data, args.policy, args.labels_per_class) == ('efficientnet_lite0', 'fashion_mnist_small', 'full', 10)


@pytest.mark.parametrize('policy', ['finetune', 'last', 'last:', 'last:two', 'linear:3'])
def test_unknown_policy_lists_the_policies(policy):
    message = usage_error('--policy', policy)
    assert policy in message and all(name in message for name in ('linear', 'last:K', 'full', 'scratch'))


@pytest.mark.parametrize('policy', ['last:9', 'last:100'])
def test_k_larger_than_the_network_names_the_range(policy):
    assert 'use last:1 to last:8' in usage_error('--policy', policy, '--labels-per-class', 1)


def test_k_of_zero():
    assert 'at least 1' in usage_error('--policy', 'last:0')


@pytest.mark.parametrize('labels', [0, -3, 1001])
def test_impossible_labels_per_class(labels):
    message = usage_error('--policy', 'linear', '--labels-per-class', labels)
    assert 'use 1 to 1000' in message


@pytest.mark.parametrize('flag, value', [('--epochs', 0), ('--bs', 1), ('--size', 8), ('--lr', 0)])
def test_impossible_options(flag, value):
    assert flag in usage_error(flag, value)


def test_unknown_dataset_and_network():
    assert 'fashion_mnist_small' in usage_error('--data', 'mnist')
    assert 'efficientnet_lite0' in usage_error('--pretrained', 'no_such_network', '--labels-per-class', 1)


def test_linear_run_writes_json(tmp_path, capsys):
    path = tmp_path / 'out' / 'finetune.json'
    record = run_finetune(parse('--policy', 'linear', '--labels-per-class', 2, '--test-per-class', 5,
                                '--size', 32, '--device', 'cpu', '--json', path))
    written = json.loads(path.read_text())
    assert written == record
    for key in ('policy', 'pretrained', 'data', 'labels_per_class', 'accuracy', 'seconds', 'device'):
        assert key in written, key
    assert (written['policy'], written['pretrained'], written['labels_per_class']) == ('linear', 'efficientnet_lite0', 2)
    assert written['device'] == 'cpu' and written['test_images'] == 50
    assert 0 <= written['accuracy'] <= 1
    assert 'test accuracy' in capsys.readouterr().out


def test_photo_textures_is_a_dataset():
    from sslcourse.data import get_data
    data = get_data('photo_textures', train_per_class=4, test_per_class=2)
    assert data.train.images.shape == (40, 3, 28, 28) and data.test.images.shape == (20, 3, 28, 28)
    assert data.train.images.dtype == torch.uint8 and data.num_classes == 10
