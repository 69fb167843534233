"""The `sslcourse` command line: bad input gives exit status 2 and exactly one line on stderr, never a traceback.

Most cases call `sslcourse.cli.main(argv)` in-process (an interpreter start costs seconds: torch and fastai load);
two run the installed console script in a subprocess. `python -m sslcourse.cli` is not tested: the module has no
`if __name__ == '__main__'` guard and there is no `sslcourse/__main__.py`, so it would run nothing.
"""
import gzip
import json
import shutil
import subprocess
import sys

import pytest

import sslcourse.cli as cli
import sslcourse.data as data_module
from sslcourse.core import get_precision
from sslcourse.data import EMBEDDED_DIR, get_data

ALL_DATASETS = ['cifar10', 'cifar100', 'fashion_mnist', 'fashion_mnist_small', 'imagenette', 'stl10']
FASHION_FILES = ['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
                 't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz']


pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    "Run from an empty folder (the default --out is relative) with datasets looked up under it, never in ~."
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('SSLCOURSE_DATA', str(tmp_path / 'sslcourse-data'))


def run_main(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    "The single line of a usage error on stderr."
    assert 'Traceback' not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f'expected exactly one line on stderr, got {len(lines)}:\n{err}'
    assert lines[0].startswith('sslcourse: error: '), lines[0]
    return lines[0]


def assert_usage_error(argv, capsys, *fragments) -> str:
    code, out, err = run_main(argv, capsys)
    line = error_line(err)
    assert code == 2, (code, err)
    for fragment in fragments: assert fragment in line, line
    return line


@pytest.mark.parametrize('argv, fragments', [
    (['pretrain', 'no_such_method'], ["'no_such_method'", 'simclr']),
    (['bench', 'no_such_method'], ['simclr']),
    (['pretrain', 'simclr', '--data', 'no_such_data'], ["'no_such_data'", 'fashion_mnist_small', 'cifar10']),
    (['pretrain', 'simclr', '--arch', 'no_such_arch'], ["'no_such_arch'", 'convnet', 'resnet18']),
    (['pretrain', 'simclr', '--label-fraction', '0'], ['--label-fraction', '0.0']),
    (['pretrain', 'simclr', '--label-fraction', '1.5'], ['--label-fraction', '1.5']),
    (['pretrain', 'simclr', '--label-fraction', '-0.1'], ['--label-fraction']),
    (['pretrain', 'simclr', '--epochs', '0'], ['--epochs', '0']),
    (['pretrain', 'simclr', '--epochs', '-3'], ['--epochs']),
    (['pretrain', 'simclr', '--bs', '1'], ['--bs', '1']),
    (['pretrain', 'simclr', '--lr', '0'], ['--lr']),
    (['pretrain', 'simclr', '--epochs', 'two'], ['two']),         # argparse's own errors are one line too
    (['pretrain', 'simclr', '--no-such-option'], ['--no-such-option']),
    (['pretrain'], ['method']),
    (['no_such_command'], ['no_such_command']),
    (['bench', 'simclr', '--epochs', '1'], ['--epochs 2']),
    (['bench', 'simclr', '--peak-tflops', '0'], ['--peak-tflops']),
])
def test_bad_input_is_one_line_and_exit_status_2(argv, fragments, capsys):
    assert_usage_error(argv, capsys, *fragments)


def test_no_command_names_the_help_command_once(capsys):
    line = assert_usage_error([], capsys, 'command', 'sslcourse --help')
    assert 'sslcourse sslcourse' not in line, line


def test_missing_data_directory_says_where_it_looked(tmp_path, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert_usage_error(['pretrain', 'simclr', '--data', 'cifar10', '--data-dir', empty,
                       '--out', tmp_path / 'run'], capsys, str(empty), 'cifar10')
    assert not (tmp_path / 'run').exists(), 'a failed start must not create the run folder'


def test_missing_fashion_mnist_lists_every_place_it_looked(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data_module, 'DEBIAN_FASHION_MNIST', tmp_path / 'no-debian-package')  # the machine may have it
    nowhere = tmp_path / 'nonexistent'
    assert_usage_error(['pretrain', 'simclr', '--data', 'fashion_mnist', '--data-dir', nowhere], capsys,
                       str(nowhere), str(tmp_path / 'no-debian-package'), 'fashion_mnist_small')


def test_truncated_gz_is_one_line_and_the_given_folder_wins(tmp_path, capsys):
    folder = tmp_path / 'fashion'
    folder.mkdir()
    for name in FASHION_FILES: shutil.copy(EMBEDDED_DIR / name, folder / name)
    broken = folder / 'train-images-idx3-ubyte.gz'
    with open(broken, 'r+b') as file: file.truncate(50_000)
    with pytest.raises((EOFError, OSError)): gzip.open(broken).read()  # the fixture really is broken
    # fashion_mnist is also found in the Debian package folder, so this only fails if --data-dir is tried first
    assert_usage_error(['pretrain', 'simclr', '--data', 'fashion_mnist', '--data-dir', folder,
                        '--out', tmp_path / 'run'], capsys, str(broken), 'corrupt')


def test_list_in_process(capsys):
    code, out, err = run_main(['list'], capsys)
    assert code == 0 and err == ''
    lines = {line.split(':')[0]: line.split(':', 1)[1] for line in out.splitlines()}
    assert 'simclr' in lines['methods']
    listed = [name.strip() for name in lines['datasets'].split(',')]
    assert set(ALL_DATASETS) <= set(listed)  # every dataset DESIGN.md names
    assert listed == data_module.list_datasets()  # and exactly what the registry holds
    assert 'convnet' in lines['architectures']


CONSOLE = shutil.which('sslcourse')
needs_console = pytest.mark.skipif(CONSOLE is None, reason='the sslcourse console script is not on PATH '
                                                           '(pip install -e . puts it next to the interpreter)')


@needs_console
def test_console_script_list():
    result = subprocess.run([CONSOLE, 'list'], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == '', result.stderr  # no import-time warnings either
    assert 'simclr' in result.stdout
    for name in ALL_DATASETS: assert name in result.stdout


def test_python_dash_m_is_the_same_command(tmp_path):
    result = subprocess.run([sys.executable, '-m', 'sslcourse', 'pretrain', 'no_such_method', '--out', str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown method 'no_such_method'" in error_line(result.stderr)


@needs_console
def test_console_script_bad_input(tmp_path):
    result = subprocess.run([CONSOLE, 'pretrain', 'no_such_method', '--out', str(tmp_path / 'run')],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown method 'no_such_method'" in error_line(result.stderr)
    assert result.stdout == ''


@pytest.fixture
def small_data(monkeypatch):
    "The CLI has no option to limit the data, so the embedded set is cut to 30 images per class here."
    calls = []
    def limited(name='fashion_mnist_small', root=None, download=False, **kwargs):
        calls.append(name)
        return get_data(name, root=root, download=download, limit=30)
    monkeypatch.setattr(cli, 'get_data', limited)
    return calls


def test_pretrain_end_to_end(tmp_path, capsys, small_data):
    out, record_path = tmp_path / 'run', tmp_path / 'results' / 'simclr.json'
    code, stdout, err = run_main(['pretrain', 'simclr', '--epochs', 1, '--bs', 64, '--device', 'cpu',
                                  '--json', record_path, '--out', out], capsys)
    assert code == 0, err
    assert err == '', err  # a successful run writes nothing to stderr
    assert 'knn' in stdout.lower() and 'wrote' in stdout
    assert small_data == ['fashion_mnist_small']
    record = json.loads(record_path.read_text())
    assert {'method', 'data', 'arch', 'epochs', 'seconds', 'img_per_s', 'knn_acc', 'linear_acc', 'device'} <= set(record)
    assert (record['method'], record['data'], record['arch'], record['epochs'], record['device']) == \
        ('simclr', 'fashion_mnist_small', 'convnet', 1, 'cpu')
    assert record['precision'] == get_precision(None, 'cpu')  # the record says which precision ran
    assert isinstance(record['seconds'], float) and record['seconds'] > 0
    assert isinstance(record['img_per_s'], float) and record['img_per_s'] > 0
    for key in ('knn_acc', 'linear_acc'):
        assert isinstance(record[key], float) and 0 <= record[key] <= 1, record[key]
    for name in ('checkpoint.pth', 'loss.png', 'embedding.png'):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ('loss.png', 'embedding.png'):
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', name
    assert not list(out.glob('*.tmp'))

    # a second run into the same folder must not overwrite the first without --resume
    before = (out / 'checkpoint.pth').read_bytes()
    line = assert_usage_error(['pretrain', 'simclr', '--epochs', 1, '--bs', 64, '--device', 'cpu', '--out', out],
                              capsys, str(out / 'checkpoint.pth'), '--resume')
    assert (out / 'checkpoint.pth').read_bytes() == before, line
