"""Bad input is found before any work: one line on stderr and exit status 2, and the user's files are left as they were.
Also: typed method options (`-o symmetric=false` is False), `--resume` without a checkpoint says so, and each run
folder keeps a per-epoch `history.csv`."""
import csv
import json

import pytest

from sslcourse.cli import main, parse_method_options
from sslcourse.core import UsageError
from sslcourse.train.learner import get_method

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


def _one_line_error(capsys, arguments) -> str:
    assert main(arguments) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('sslcourse: error: '), lines
    return lines[0]


@pytest.mark.parametrize('option, fragment', [
    (['--device', 'meta'], 'use one of: cpu'), (['--device', 'mps'], '--device mps cannot train here'),
    (['--compile', 'nosuchmode'], 'choose from: default, reduce-overhead'),
    (['--precision', 'fp16'], "unknown precision 'fp16'; choose from: bf16, fp32"),
    (['-o', 'temperature=0'], 'temperature must be positive'), (['-o', 'scale=0.5'], 'scale must be 2 numbers'),
    (['-o', 'projection_dim=1.5'], 'projection_dim must be a whole number'),
    (['--arch', 'timm:vit_tiny_patch16_224'], 'cannot take fashion_mnist_small images of 28 px')])
def test_impossible_options_are_one_line(capsys, tmp_path, option, fragment):
    line = _one_line_error(capsys, ['pretrain', 'simclr', '--limit', '2', '--epochs', '1', '--out', str(tmp_path / 'run'), *option])
    assert fragment in line, line
    assert not (tmp_path / 'run').exists(), 'nothing is written before the options are checked'


def test_output_places_are_checked_before_training(capsys, tmp_path):
    a_file = tmp_path / 'notes.txt'; a_file.write_text('mine')
    assert 'is a file, not a folder' in _one_line_error(capsys, ['pretrain', 'simclr', '--out', str(a_file)])
    assert 'is a folder' in _one_line_error(capsys, ['pretrain', 'simclr', '--out', str(tmp_path / 'r'), '--json', str(tmp_path)])
    line = _one_line_error(capsys, ['pretrain', 'simclr', '--out', str(tmp_path / 'r'), '--json', str(a_file / 'x.json')])
    assert 'notes.txt is a file' in line
    assert a_file.read_text() == 'mine'


@pytest.mark.parametrize('method, pair, value', [
    ('moco', 'symmetric=false', False), ('moco', 'symmetric=True', True), ('byol', 'predictor=no', False),
    ('dino', 'centering=off', False), ('simclr', 'temperature=1', 1.0), ('simclr', 'scale=0.5,1', (0.5, 1.0)),
    ('dino', 'warmup_teacher_temperature=none', None), ('dino', 'warmup_teacher_temperature=0.02', 0.02)])
def test_options_take_the_type_of_their_default(method, pair, value):
    parsed = parse_method_options(get_method(method), [pair])
    assert list(parsed.values()) == [value] and type(parsed[pair.split('=')[0]]) is type(value)


@pytest.mark.parametrize('method, pair', [('moco', 'symmetric=maybe'), ('byol', 'predictor=2'), ('simclr', 'temperature=hot')])
def test_options_of_the_wrong_type_are_refused(method, pair):
    with pytest.raises(UsageError): parse_method_options(get_method(method), [pair])


def test_resume_without_a_checkpoint_says_so_and_history_is_kept(capsys, tmp_path):
    out, record = tmp_path / 'run', tmp_path / 'r.json'
    assert main(['pretrain', 'simclr', '--limit', '3', '--bs', '16', '--epochs', '2', '--device', 'cpu', '--resume',
                 '--out', str(out), '--json', str(record)]) == 0
    err = capsys.readouterr().err
    assert f'no checkpoint at {out / "checkpoint.pth"} to resume from; starting from scratch' in err
    rows = list(csv.DictReader((out / 'history.csv').open()))
    assert [row['epoch'] for row in rows] == ['1', '2'] and all(float(row['loss']) > 0 for row in rows)
    assert all(0 <= float(row['knn']) <= 1 and float(row['img_per_s']) > 0 for row in rows)
    first = json.loads(record.read_text())
    # resuming the finished run trains nothing and writes the same record (timings included), not zeros
    assert main(['pretrain', 'simclr', '--limit', '3', '--bs', '16', '--epochs', '2', '--device', 'cpu', '--resume',
                 '--out', str(out), '--json', str(record)]) == 0
    again = json.loads(record.read_text())
    assert again['seconds'] == first['seconds'] > 0 and again['img_per_s'] == first['img_per_s'] > 0
    assert again['knn_history'] == first['knn_history'] and len(again['knn_history']) == 2
