"""sslcourse as an installed package: a built wheel carries the data and records it reads at run time, runs a
pretraining from an empty folder outside the checkout, and the datasets are all registered by `sslcourse.data`."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sslcourse
from sslcourse.experiments.supervised import PACKAGED_RESULTS

CHECKOUT = Path(sslcourse.__file__).resolve().parent.parent
FASHION_FILES = ['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
                 't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz']


def one_thread_environment(**extra) -> dict:
    "The environment for a child process: one thread, no inherited PYTHONPATH."
    environment = {key: value for key, value in os.environ.items() if key != 'PYTHONPATH'}
    return {**environment, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', **extra}


def run_python(code: str, cwd, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], cwd=cwd, env=one_thread_environment(**extra),
                          capture_output=True, text=True, timeout=300)


def test_photo_textures_is_registered_without_importing_transfer(tmp_path):
    code = ("import sys\n"
            "from sslcourse.data import get_data, list_datasets\n"
            "assert 'photo_textures' in list_datasets(), list_datasets()\n"
            "assert 'sslcourse.experiments.finetune' not in sys.modules\n"
            "data = get_data('photo_textures', train_per_class=2, test_per_class=1)\n"
            "print(data.name, len(data.train), len(data.test), data.num_classes)\n")
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ['photo_textures', '20', '10', '10']


def test_shipped_records_match_the_lessons_results():
    "The records in the package are copies of what the lessons wrote in nbs/results: a full rerun must refresh them."
    shipped = sorted(PACKAGED_RESULTS.glob('*.json'))
    assert [path.name for path in shipped] == ['layer_transfer.json', 'supervised_curve.json']
    for path in shipped:
        lesson_record = CHECKOUT / 'nbs' / 'results' / path.name
        assert path.read_bytes() == lesson_record.read_bytes(), f'copy {lesson_record} to {path}'


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    "The checkout built as a wheel and unpacked into its own folder: (wheel, folder holding the installed package)."
    root = tmp_path_factory.mktemp('package')
    source, wheels, target = root / 'source', root / 'wheels', root / 'site'
    # a copy of what the build reads, so that setuptools' build/ folder is not left in the checkout
    shutil.copytree(CHECKOUT / 'sslcourse', source / 'sslcourse', ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('pyproject.toml', 'README.md'): shutil.copy(CHECKOUT / name, source / name)
    build = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--quiet',
                            '-w', str(wheels), str(source)], cwd=root, env=one_thread_environment(),
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel, = wheels.glob('sslcourse-*.whl')
    install = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index', '--quiet',
                              '--target', str(target), str(wheel)], cwd=root, env=one_thread_environment(),
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    return wheel, target


def test_the_wheel_carries_the_dataset_its_licence_and_the_records(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in [*FASHION_FILES, 'README.md']:
        assert f'sslcourse/assets/fashion_mnist_small/{name}' in names, name
    for name in ['supervised_curve.json', 'layer_transfer.json']:
        assert f'sslcourse/assets/results/{name}' in names, name


def test_the_installed_wheel_reads_its_own_files(installed, tmp_path):
    _, target = installed
    code = ("import sslcourse\n"
            "from sslcourse.data import EMBEDDED_DIR, get_data\n"
            "from sslcourse.experiments.supervised import RESULTS_DIR, baseline_accuracy\n"
            "print(sslcourse.__file__); print(EMBEDDED_DIR); print(RESULTS_DIR)\n"
            "print(get_data(limit=2).name, baseline_accuracy(10) > 0.1)\n")
    result = run_python(code, tmp_path, PYTHONPATH=str(target))
    assert result.returncode == 0, result.stderr[-3000:]
    package, embedded, results, last = result.stdout.strip().splitlines()
    for path in (package, embedded, results):
        assert Path(path).is_relative_to(target), path
    assert last == 'fashion_mnist_small True'


def test_pretrain_runs_from_an_empty_folder_with_the_installed_wheel(installed, tmp_path):
    _, target = installed
    work = tmp_path / 'empty'
    work.mkdir()
    command = [sys.executable, '-m', 'sslcourse', 'pretrain', 'simclr', '--epochs', '1', '--limit', '5', '--bs', '32',
               '--device', 'cpu', '--out', 'run', '--json', 'simclr.json']
    result = subprocess.run(command, cwd=work, env=one_thread_environment(PYTHONPATH=str(target)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((work / 'simclr.json').read_text())
    assert record['method'] == 'simclr' and record['data'] == 'fashion_mnist_small'
