"""Spine 2 from the command line: a real `torchrun` launch of two gloo processes (rank 0 alone writes one checkpoint,
one pair of figures and one JSON whose images/s counts both processes), and STL-10 pretraining on train + unlabeled.
Both run on small fixtures written in the datasets' real on-disk formats, so they take seconds, not minutes."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sslcourse.cli import main
from tests.fixtures import write_stl10, write_fashion_mnist


@pytest.fixture(scope='module')
def small_fashion(tmp_path_factory):
    "40 training and 20 test images per class of the embedded subset, as the four IDX files of Fashion-MNIST."
    return write_fashion_mnist(tmp_path_factory.mktemp('fashion'))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def test_torchrun_two_processes_end_to_end(small_fashion, tmp_path):
    torchrun = shutil.which('torchrun', path=str(Path(sys.executable).parent)) or shutil.which('torchrun')
    assert torchrun, 'torch installs the torchrun launcher'
    out, record = tmp_path / 'run', tmp_path / 'record.json'
    command = [torchrun, '--nproc_per_node', '2', '--master_port', str(_free_port()), '-m', 'sslcourse', 'pretrain',
               'simclr', '--device', 'cpu', '--data', 'fashion_mnist', '--data-dir', str(small_fashion),
               '--epochs', '2', '--bs', '64', '--out', str(out), '--json', str(record),
               # rank 0 fine-tunes alone after training: batch norms converted for several processes must not wait for
               # the others (before, this exited 1 with gloo's "connection closed by peer"; NCCL would hang)
               '--sync-batchnorm', '--label-fraction', '0.5']
    environment = dict(os.environ, OMP_NUM_THREADS='1')
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('pretraining simclr') == 1 and result.stdout.count('wrote ') == 1, result.stdout
    assert 'x 2 processes' in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ['checkpoint.pth', 'embedding.png', 'history.csv', 'loss.png']
    assert not list(tmp_path.rglob('*.tmp'))
    written = json.loads(record.read_text())
    assert written['processes'] == 2 and written['epochs'] == 2
    # 400 images in global batches of 64: 6 steps of 64 per epoch, counted over both processes
    assert written['train_images'] == 384
    assert written['img_per_s'] * written['seconds'] == pytest.approx(2 * 384, rel=0.02)
    assert len(written['knn_history']) == 2 and 0.1 < written['linear_acc'] <= 1
    assert 0 <= written['finetune_acc'] <= 1


def test_torchrun_batch_that_does_not_split_is_one_line(small_fashion, tmp_path):
    torchrun = shutil.which('torchrun', path=str(Path(sys.executable).parent)) or shutil.which('torchrun')
    command = [torchrun, '--nproc_per_node', '2', '--master_port', str(_free_port()), '-m', 'sslcourse', 'pretrain',
               'simclr', '--device', 'cpu', '--data', 'fashion_mnist', '--data-dir', str(small_fashion),
               '--epochs', '1', '--bs', '63', '--out', str(tmp_path / 'run')]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS='1'), cwd=tmp_path)
    assert result.returncode != 0
    assert 'sslcourse: error: --bs 63 does not split evenly over 2 processes; use a multiple of 2' in result.stderr


def test_stl10_pretrains_on_train_and_unlabeled(tmp_path, capsys):
    write_stl10(tmp_path, n_train=12, n_test=10, n_unlabeled=36)
    record = tmp_path / 'record.json'
    status = main(['pretrain', 'simclr', '--data', 'stl10', '--data-dir', str(tmp_path), '--device', 'cpu',
                   '--epochs', '1', '--bs', '8', '--out', str(tmp_path / 'run'), '--json', str(record)])
    assert status == 0, capsys.readouterr().err
    written = json.loads(record.read_text())
    assert written['train_images'] == 48          # 12 labelled + 36 unlabeled, in batches of 8
    assert 0 <= written['knn_acc'] <= 1 and 0 <= written['linear_acc'] <= 1   # scored on the labelled splits
