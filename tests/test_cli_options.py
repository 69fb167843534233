"Method options from the command line (`-o NAME=VALUE`): parsed, checked against the method, passed through, recorded."
import json

import pytest

from sslcourse.cli import main, parse_method_options, method_option_names
from sslcourse.core import UsageError
from sslcourse.train.learner import get_method
from tests.fixtures import write_fashion_mnist


def test_values_are_parsed_as_python_literals_or_words():
    options = parse_method_options(get_method('npid'), ['temperature=0.2', 'negatives=64', 'loss=nce', 'scale=0.5,1.0'])
    assert options == {'temperature': 0.2, 'negatives': 64, 'loss': 'nce', 'scale': (0.5, 1.0)}


def test_every_method_lists_its_own_options():
    own, views = method_option_names(get_method('moco'))
    assert own['queue_size'] == 4096 and own['temperature'] == 0.07  # class defaults, not None
    assert 'jitter' in views and 'encoder' not in own and 'num_images' not in own


@pytest.mark.parametrize('pair, message', [
    ('queue_sze=64', "no option 'queue_sze'; choose from:"),
    ('queue_size=many', 'must be a whole number'),
    ('temperature', 'NAME=VALUE'),
])
def test_bad_options_are_one_line(pair, message):
    with pytest.raises(UsageError, match=message): parse_method_options(get_method('moco'), [pair])


def test_cli_exit_status_and_line(capsys):
    assert main(['pretrain', 'moco', '-o', 'queue_sze=64']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'queue_size' in err[0]
    # an impossible value found by the method's own checks: K larger than the bank of 10,000 images
    assert main(['pretrain', 'npid', '-o', 'negatives=20000', '--epochs', '1', '--out', '/nonexistent/never']) == 2
    assert 'bank size' in capsys.readouterr().err


@pytest.mark.parametrize('name', ['cpc', 'npid', 'pirl', 'moco', 'mocov2'])
def test_list_names_the_contrastive_methods(capsys, name):
    assert main(['list']) == 0
    methods = next(line for line in capsys.readouterr().out.splitlines() if line.startswith('methods'))
    assert name in [method.strip() for method in methods.split(':', 1)[1].split(',')]


def test_list_shows_a_methods_options(capsys):
    assert main(['list', 'npid']) == 0
    out = capsys.readouterr().out
    assert 'negatives = 1024' in out and 'temperature = 0.07' in out


@pytest.mark.usefixtures('one_thread')
def test_options_reach_the_method_and_the_json(tmp_path):
    record = tmp_path / 'r.json'
    assert main(['bench', 'moco', '--epochs', '2', '--bs', '32', '-o', 'queue_size=96', '-o', 'momentum=0.9',
                 '--data', 'fashion_mnist', '--data-dir', str(write_fashion_mnist(tmp_path, 10, 5)),
                 '--device', 'cpu', '--json', str(record)]) == 0
    saved = json.loads(record.read_text())
    assert saved['options'] == {'queue_size': 96, 'momentum': 0.9} and saved['peak_memory_mb'] > 0
