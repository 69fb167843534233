"""Part 2 from the shell: `sslcourse pretrain NAME --epochs 1 --json F` for every pretext task, `sslcourse list`, and
colorisation's one-line refusal of grey data."""
import json

import pytest

import sslcourse.cli as cli
from sslcourse.data import get_data

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py

PRETEXT_TASKS = ['autoencoder', 'rotnet', 'relpos', 'jigsaw', 'context_encoder', 'colorization', 'counting',
                 'exemplar', 'selfie']


@pytest.fixture
def small_data(monkeypatch):
    "The acceptance command on 12 images per class of the requested dataset, to keep the test short."
    def limited(name='fashion_mnist_small', root=None, download=False, **kwargs):
        return get_data(name, root=root, download=download, limit=12)
    monkeypatch.setattr(cli, 'get_data', limited)


def pretrain(tmp_path, name, *options):
    record_path = tmp_path / f'{name}.json'
    code = cli.main(['pretrain', name, '--epochs', '1', '--bs', '64', '--device', 'cpu', '--json', str(record_path),
                     '--out', str(tmp_path / 'run'), *options])
    return code, record_path


@pytest.mark.parametrize('name', [name for name in PRETEXT_TASKS if name != 'colorization'])
def test_pretrain_command_on_the_embedded_data(name, tmp_path, small_data, capsys):
    code, record_path = pretrain(tmp_path, name)
    assert code == 0, capsys.readouterr().err
    record = json.loads(record_path.read_text())
    assert record['method'] == name and record['data'] == 'fashion_mnist_small'
    assert 0 <= record['linear_acc'] <= 1 and 0 <= record['knn_acc'] <= 1 and record['img_per_s'] > 0
    assert (tmp_path / 'run' / 'checkpoint.pth').exists()
    if name == 'exemplar':  # the seed choice is in the checkpoint, so a resumed run keeps its classes
        code = cli.main(['pretrain', name, '--epochs', '2', '--bs', '64', '--device', 'cpu', '--resume',
                         '--out', str(tmp_path / 'run')])
        assert code == 0, capsys.readouterr().err


def test_colorization_runs_on_offline_colour_data(tmp_path, small_data, capsys):
    code, record_path = pretrain(tmp_path, 'colorization', '--data', 'photo_textures')
    assert code == 0, capsys.readouterr().err
    record = json.loads(record_path.read_text())
    assert record['method'] == 'colorization' and record['data'] == 'photo_textures'


def test_colorization_on_grey_data_exits_2_with_one_line_naming_colour_data(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli.main(['pretrain', 'colorization', '--epochs', '1', '--device', 'cpu'])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('sslcourse: error:'), err
    assert all(name in lines[0] for name in ('photo_textures', 'cifar10', 'stl10', 'imagenette')), err
    assert not list(tmp_path.rglob('checkpoint.pth'))  # refused before anything was written


def test_list_shows_every_pretext_task(capsys):
    assert cli.main(['list']) == 0
    methods = next(line for line in capsys.readouterr().out.splitlines() if line.startswith('methods:'))
    assert all(name in methods.split(':', 1)[1].replace(',', ' ').split() for name in PRETEXT_TASKS)
