"""What an epoch of SimCLR costs besides training, on the CPU: the kNN monitor (with its 3,000 fixed voters and with
every training image voting), the collapse monitor and the online probe. Each setting trains 2 epochs from the same
seed; the monitors' `after_epoch` is timed inside, the probe by an epoch with it against one without. Twice each.

    python benchmarks/epoch_cost.py
"""
import time

import torch

from sslcourse.data import get_data
from sslcourse.train.learner import fit_ssl, ssl_learner

data = get_data('fashion_mnist_small')


def epoch(probe: bool, knn_every: int | None, every_voter: bool = False) -> tuple[float, dict, str]:
    "(seconds per epoch, {monitor: seconds of its last after_epoch}, precision) of a 2-epoch SimCLR run."
    learn = ssl_learner('simclr', data, device='cpu', progress='none', seed=0, probe=probe, knn_every=knn_every)
    callbacks, spent = {type(cb).__name__: cb for cb in learn.cbs}, {}
    for name in ('KNNMonitor', 'CollapseMonitor'):
        if name not in callbacks: continue
        callback = callbacks[name]
        if every_voter and name == 'KNNMonitor': callback.voters = torch.nonzero(callback.data.train.labels >= 0).squeeze(1)
        def timed(original=callback.after_epoch, name=name):
            started = time.perf_counter(); original(); spent[name] = round(time.perf_counter() - started, 2)
        callback.after_epoch = timed
    started = time.perf_counter(); fit_ssl(learn, 2)
    return (time.perf_counter() - started) / 2, spent, learn.precision


for repeat in range(2):
    for probe, knn_every, every_voter in ((False, None, False), (True, None, False), (True, 1, False), (True, 1, True)):
        seconds, spent, precision = epoch(probe, knn_every, every_voter)
        voters = 'all' if every_voter else '3,000'
        print(f'repeat {repeat}: probe={probe} knn_every={knn_every} voters={voters}: {seconds:.1f} s per epoch '
              f'({precision}); monitors in the last epoch: {spent}', flush=True)
