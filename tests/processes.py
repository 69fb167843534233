"Start several Python processes for the multi-process tests, and report their tracebacks if any fails or hangs."
import os
import socket
import traceback
from pathlib import Path

import torch.multiprocessing as mp


def free_port() -> int:
    "A TCP port on 127.0.0.1 that nothing listens on right now."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _guarded(target, rank: int, folder: str, args: tuple):
    try: target(rank, folder, *args)
    except BaseException:
        Path(folder, f'rank{rank}.error').write_text(traceback.format_exc())
        raise


def run_processes(target, world_size: int, folder, args: tuple = (), timeout: float = 240):
    "Run `target(rank, folder, *args)` in `world_size` spawned processes; fail with their tracebacks if any fails."
    context = mp.get_context('spawn')
    processes = [context.Process(target=_guarded, args=(target, rank, str(folder), args)) for rank in range(world_size)]
    for process in processes: process.start()
    for process in processes: process.join(timeout)
    hung = [p for p in processes if p.is_alive()]
    for process in hung: process.terminate(); process.join(5)
    errors = ''.join(Path(folder, f'rank{r}.error').read_text() for r in range(world_size)
                     if Path(folder, f'rank{r}.error').exists())
    assert not hung, f'worker processes hung for {timeout} s\n{errors}'
    assert all(p.exitcode == 0 for p in processes), f'exit codes {[p.exitcode for p in processes]}\n{errors}'
