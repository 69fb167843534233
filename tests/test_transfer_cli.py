"""The helpers behind `sslcourse transfer`: bad input is one `UsageError` line raised before any work, and a tiny real
run writes the accuracy of every arm at every n to JSON, in a form the plotting and findings functions read back."""
import argparse
import json

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest

import sslcourse.experiments.layer_transfer as layer_transfer
from sslcourse.core import UsageError
from sslcourse.data import FASHION_MNIST_CLASSES, get_data


def parse(argv):
    parser = layer_transfer.add_transfer_arguments(argparse.ArgumentParser(prog='sslcourse transfer'))
    return parser.parse_args([str(a) for a in argv])


@pytest.fixture
def no_training(monkeypatch):
    "Fail the test if bad input gets as far as the experiment."
    def refuse(*args, **kwargs): raise AssertionError('the experiment ran although the input was bad')
    monkeypatch.setattr(layer_transfer, 'layer_transfer_experiment', refuse)


@pytest.mark.parametrize('argv, fragments', [
    (['--split', 'natural'], ["'natural'", 'random', 'dissimilar']),
    (['--seeds', '0'], ['seeds', 'at least 1', '0']),
    (['--seeds', '-3'], ['seeds', '-3']),
    (['--epochs', '0'], ['epochs', 'at least 1']),
    (['--limit', '0'], ['--limit', 'at least 1']),
    (['--data', 'no_such_data'], ["'no_such_data'", 'fashion_mnist_small']),
    (['--device', 'abacus'], ["'abacus'", 'cpu', 'cuda']),
])
def test_bad_input_is_one_line(argv, fragments, no_training):
    with pytest.raises(UsageError) as error: layer_transfer.run_transfer(parse(argv))
    message = str(error.value)
    assert '\n' not in message, message
    for fragment in fragments: assert fragment in message, message


def test_dissimilar_split_needs_fashion_mnist_classes():
    with pytest.raises(UsageError, match='--split random'):
        layer_transfer.class_halves([f'class {i}' for i in range(10)], 'dissimilar')


@pytest.mark.parametrize('split', layer_transfer.SPLITS)
def test_halves_cover_the_classes_once(split):
    a, b = layer_transfer.class_halves(FASHION_MNIST_CLASSES, split)
    assert len(a) == len(b) == 5 and sorted(a + b) == list(range(10))
    assert layer_transfer.class_halves(FASHION_MNIST_CLASSES, split) == (a, b)  # the same split every time


def test_tiny_run_writes_every_arm_and_n(tmp_path, monkeypatch, capsys, one_thread):
    small = get_data('fashion_mnist_small', limit=10)  # 10 images per class in train and test: a few seconds
    asked = []
    def tiny_data(name, **kwargs):
        asked.append(name); return small
    monkeypatch.setattr(layer_transfer, 'get_data', tiny_data)
    path = tmp_path / 'runs' / 'transfer.json'
    returned = layer_transfer.run_transfer(parse(['--split', 'dissimilar', '--seeds', 2, '--epochs', 1,
                                                  '--device', 'cpu', '--json', path]))
    assert asked == ['fashion_mnist_small']
    record = json.loads(path.read_text())
    assert record['split'] == 'dissimilar' and record['seeds'] == 2 and record['device'] == 'cpu'
    assert record['classes_B'] == layer_transfer.TOPS and record['classes_A'] == layer_transfer.NOT_TOPS
    assert record['train_per_half'] == 50 and record['test_per_half'] == 50
    assert [len(record['base'][half]) for half in 'AB'] == [2, 2]
    assert set(record['arms']) == set(layer_transfer.ARMS)
    for arm, by_n in record['arms'].items():
        assert sorted(by_n, key=int) == [str(n) for n in range(1, 8)], arm
        assert all(len(seeds) == 2 and all(0 <= a <= 1 for a in seeds) for seeds in by_n.values()), arm
    assert returned['arms']['AnB'][7] == record['arms']['AnB']['7']
    assert '| AnB+ |' in capsys.readouterr().out  # the table of means went to stdout
    # everything downstream reads the JSON back as it is
    rows = layer_transfer.transfer_findings(record)
    assert len(rows) == 7 and all(row['holds'] in ('yes', 'partly', 'no') for row in rows)
    plt.close(layer_transfer.plot_layer_transfer(record))
