"""N processes train the same model as 1 process on the concatenated batch, for every registered method.

Each method trains one epoch of two steps through `ssl_learner` and `fit_ssl`, with the online probe and the kNN and
collapse monitors on, in 2 gloo processes and in 1 process. All methods run inside the same three processes (two ranks,
one single process): starting torch and fastai once per method would cost minutes.

Two properties, for every method:
- the ranks agree: every parameter and buffer of the method (heads, targets, queues, banks, prototypes, cluster state),
  the online probe and the kNN history are identical on both processes, although each drew its own augmentations;
- 2 processes equal 1 process on the concatenated batch, where the method is deterministic given its views: the views
  are made deterministic (crops of the whole image, no jitter) for the methods whose views are only `ViewPipeline`s, and
  batch norm sees the whole global batch (`sync_batchnorm=True`). Methods that draw more than crops in `make_views`
  (tiles, rotations, masks, noise) are compared across ranks only. SGD, not Adam: Adam divides by the gradient's size,
  so a last-bit difference in a near-zero gradient becomes a full step.
"""
import os

import pytest
import torch

from tests.processes import free_port, run_processes
from tests.tiny_methods import TINY, tiny_data

WORLD_SIZE, GLOBAL_BATCH, JOIN_TIMEOUT_S = 2, 16, 420
# crops of the whole image, no flip, no colour: a ViewPipeline that draws but changes nothing
FIXED_VIEWS = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, jitter=0.0, grayscale=0.0, blur=0.0, solarize=0.0)
# methods whose views are only ViewPipelines (fixed by FIXED_VIEWS) and whose other randomness is shared by the processes
TWO_VIEW = {'simclr', 'byol', 'simsiam', 'barlow_twins', 'vicreg', 'moco', 'mocov2', 'npid', 'swav', 'dino',
            'deepcluster', 'sela'}
# MoCo's shuffled BN splits each process's batch into random sub-batches: one group is deterministic. Barlow Twins with
# identical views, 16 images and a 1,024-wide projector is so ill-conditioned that float rounding (batch norm's variance
# summed over processes in another order) grows to 1% in two steps: a 32-wide projector keeps the comparison meaningful.
EXACT = dict(moco=dict(shuffle_groups=1), mocov2=dict(shuffle_groups=1), barlow_twins=dict(projection_dim=32, hidden_dim=32))


def _fix_views(method):
    import dataclasses
    method.views = [dataclasses.replace(view, **FIXED_VIEWS) for view in method.views]


def _run(rank: int, folder: str, world_size: int, port: int, names: list, deterministic: bool):
    os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    if world_size == 1:
        for name in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'): os.environ.pop(name)
    torch.set_num_threads(1)
    import torch.distributed as dist
    from sslcourse.core import seed_everything
    from sslcourse.train.learner import fit_ssl, ssl_learner
    results = {}
    for name in names:
        data = tiny_data(name)                                   # 40 images: two global batches of 16
        seed_everything(0)
        options = {**TINY.get(name, {}), **(EXACT.get(name, {}) if deterministic else {})}
        learn = ssl_learner(name, data, bs=GLOBAL_BATCH, device='cpu', optimizer='sgd', knn_every=1, probe=True,
                            progress='none', sync_batchnorm=True, seed=0, precision='fp32',
                            channels_last=False, **options)
        # fp32 and the default memory layout: there the identity holds to float rounding; in bf16, or in channels_last
        # (oneDNN picks its kernels by batch size), two half batches round differently from one whole batch
        if deterministic and name in TWO_VIEW: _fix_views(learn.method)
        fit_ssl(learn, 1, lr=0.01)
        results[name] = dict(state={k: v.clone() for k, v in learn.method.state_dict().items() if torch.is_tensor(v)},
                             probe=learn.online_probe.probe.state_dict(), knn=learn.knn_monitor.history,
                             steps=learn.train_iter, images=learn.throughput.history[-1]['images'])
    torch.save(results, os.path.join(folder, f'world{world_size}-rank{rank}.pth'))
    if dist.is_initialized(): dist.destroy_process_group()


def _names():
    from sslcourse.train.learner import list_methods
    return list_methods()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp('every-method')
    names = _names()
    run_processes(_run, WORLD_SIZE, folder, args=(WORLD_SIZE, free_port(), names, True), timeout=JOIN_TIMEOUT_S)
    run_processes(_run, 1, folder, args=(1, free_port(), names, True), timeout=JOIN_TIMEOUT_S)
    load = lambda name: torch.load(folder / f'{name}.pth', weights_only=False)
    return load('world1-rank0'), [load(f'world2-rank{rank}') for rank in range(WORLD_SIZE)]


def _per_process(key: str) -> bool:
    "SwAV keeps one queue per process, each with that process's own embeddings (as Caron et al.'s code does)."
    return key.startswith('queues.')


def _rows(*tensors) -> torch.Tensor:
    "The rows of `tensors` as a set: sorted, so that the order in which processes wrote them does not matter."
    rows = torch.cat(tensors)
    return rows[torch.argsort(rows[:, 0])]


def _assert_close_dicts(a: dict, b: dict, what: str, exact: bool):
    assert a.keys() == b.keys(), f'{what}: keys differ'
    for key in a:
        if _per_process(key): continue
        if exact: assert torch.equal(a[key], b[key]), f'{what}[{key}] differs between processes'
        else: torch.testing.assert_close(a[key], b[key], atol=5e-5, rtol=1e-4, msg=lambda m, key=key: f'{what}[{key}]: {m}')


@pytest.mark.parametrize('name', _names())
def test_every_process_holds_the_same_method_after_training(runs, name):
    "Parameters, buffers (queues, banks, prototypes, cluster state), the online probe and the kNN history agree."
    _, (first, second) = runs
    assert first[name]['steps'] == second[name]['steps'] == 2
    _assert_close_dicts(first[name]['state'], second[name]['state'], f'{name} method', exact=True)
    _assert_close_dicts(first[name]['probe'], second[name]['probe'], f'{name} online probe', exact=True)
    assert first[name]['knn'] == second[name]['knn']
    assert first[name]['images'] == GLOBAL_BATCH * 2, 'images/s counts every process'


@pytest.mark.parametrize('name', sorted(TWO_VIEW))
def test_two_processes_equal_one_process_on_the_concatenated_batch(runs, name):
    single, (first, second) = runs
    _assert_close_dicts(single[name]['state'], first[name]['state'], f'{name} method', exact=False)
    for key in filter(_per_process, single[name]['state']):  # together the processes' queues hold the single one's rows
        if key.endswith('items'):
            torch.testing.assert_close(_rows(first[name]['state'][key], second[name]['state'][key]),
                                       _rows(single[name]['state'][key]), atol=5e-5, rtol=1e-4)
    _assert_close_dicts(single[name]['probe'], first[name]['probe'], f'{name} online probe', exact=False)
    assert single[name]['images'] == first[name]['images']
