"""The command line under `torchrun --nproc_per_node 2` (gloo on the CPU), for the two commands whose rank-0-only work
once called collectives after the other processes had left: FLOP counting for MFU (the loss gathers across processes),
and fine-tuning an encoder whose batch norms were converted for several processes."""
import json
import os
import subprocess
import sys

import pytest

from tests.processes import free_port


def _torchrun(arguments, folder, timeout=240):
    environment = {**os.environ, 'OMP_NUM_THREADS': '1'}
    command = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(free_port()),
               '-m', 'sslcourse', *arguments]
    return subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=timeout)


def test_bench_with_mfu_under_torchrun(tmp_path):
    result = _torchrun(['bench', 'simclr', '--device', 'cpu', '--limit', '4', '--bs', '16', '--epochs', '2',
                        '--peak-tflops', '1', '--json', 'bench.json'], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / 'bench.json').read_text())
    assert record['processes'] == 2 and record['mfu'] > 0 and record['img_per_s'] > 0


def test_pretrain_with_sync_batchnorm_and_fine_tuning_under_torchrun(tmp_path):
    result = _torchrun(['pretrain', 'simclr', '--device', 'cpu', '--limit', '4', '--bs', '16', '--epochs', '1',
                        '--sync-batchnorm', '--label-fraction', '0.5', '--out', 'run', '--json', 'run.json'], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / 'run.json').read_text())
    assert record['processes'] == 2 and 0 <= record['finetune_acc'] <= 1 and 0 <= record['linear_acc'] <= 1
    assert (tmp_path / 'run' / 'history.csv').exists() and (tmp_path / 'run' / 'checkpoint.pth').exists()
