"""`sslcourse bench --peak-tflops` under `torchrun --nproc_per_node 2` (gloo on the CPU): FLOP counting for MFU runs a
loss that gathers across processes, so every process counts, not rank 0 alone after the others have left (before, this
exited 1). Fine-tuning after `--sync-batchnorm` under torchrun is in test_spine2_cli.py's end-to-end launch."""
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

