"""Acceptance (Spine 2): a real `fit_ssl` step through the distributed learner on 2 gloo processes equals 1 process on
the concatenated batch, weight for weight; the two processes see disjoint images and draw different augmentations.

The processes are started the way `torchrun` starts them: environment variables WORLD_SIZE, RANK, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT, read by `ssl_learner` (through `distributed.init_distributed`). Batch norm is made exact
with `sync_batchnorm=True` (`CrossProcessBatchNorm` on the CPU): then every process normalises with the statistics
of the whole global batch, as the single process does. The views are deterministic (the image and its mirror) so
that the two runs see the same pixels; that augmentations differ by process is checked separately.
"""
import os

import pytest
import torch

from tests.processes import free_port, run_processes

WORLD_SIZE, GLOBAL_BATCH, JOIN_TIMEOUT_S = 2, 16, 240


def _run(rank: int, folder: str, world_size: int, port: int):
    "Build the learner as the CLI would, take one optimiser step, save what the test compares."
    os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    if world_size == 1:
        for name in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'): os.environ.pop(name)
    torch.set_num_threads(1)
    import torch.distributed as dist
    from fastai.callback.core import Callback
    from sslcourse.core import seed_everything
    from sslcourse.data import get_data
    from sslcourse.augment import simclr_views
    from sslcourse.train.learner import fit_ssl, ssl_learner
    from sslcourse.methods.contrastive.simclr import SimCLR
    from sslcourse.models import create_encoder
    from sslcourse.distributed import CrossProcessBatchNorm, is_distributed

    class Mirrored(SimCLR):
        "SimCLR with deterministic views (the image and its mirror), so both runs see the same pixels."
        needs_indices = True
        def make_views(self, images):
            x = data.normalize(images)
            return [x, x.flip(-1)]

    class Record(Callback):
        def before_fit(self): self.indices = []
        def after_loss(self): self.indices.append(self.learn.indices.clone())

    data = get_data(limit=2)                                  # 20 images: one global batch of 16 per epoch
    seed_everything(0)
    method = Mirrored(create_encoder('convnet', 1), 28, data.mean, data.std)
    record = Record()
    learn = ssl_learner(method, data, bs=GLOBAL_BATCH, device='cpu', optimizer='sgd', knn_every=None, probe=False,
                        progress='none', sync_batchnorm=True, seed=0, precision='fp32', channels_last=False,
                        cbs=[record])  # fp32, default layout: equal to float rounding (bf16 and channels_last round by batch size)
    assert is_distributed() == (world_size > 1)
    converted = sum(isinstance(m, CrossProcessBatchNorm) for m in learn.method.modules())
    fit_ssl(learn, 1, lr=0.05)
    from sslcourse.train.learner import view_randomness
    with view_randomness(learn):  # the process's own augmentation stream, as `make_views` draws from it in training
        augmented = simclr_views(28, data.mean, data.std)[0](data.train.images[:4])
    after_views = torch.rand(3)  # the global stream: the same on every process (heads, probes, negatives)
    # a memory bank and a queue receive every process's rows: each process sends its own, all end up identical
    from sslcourse.train.learner import MemoryBank, Queue
    from sslcourse.distributed import all_gather_no_grad
    torch.manual_seed(5); bank, queue = MemoryBank(8, 3), Queue(6, 3)
    rows = torch.full((2, 3), float(rank + 1))
    bank.update(torch.tensor([rank, 4 + rank]), rows)
    queue.push(all_gather_no_grad(rows))
    torch.save(dict(state=learn.method.state_dict(), indices=torch.cat(record.indices), augmented=augmented,
                    after_views=after_views,
                    bank=bank.items, queue=queue.items, pointer=int(queue.pointer),
                    converted=converted, steps=len(record.indices), is_main=learn.method is learn.model or rank == 0,
                    wrapped=type(learn.model).__name__),
               os.path.join(folder, f'world{world_size}-rank{rank}.pth'))
    if dist.is_initialized(): dist.destroy_process_group()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp('multiprocess')
    for world_size in (1, WORLD_SIZE):
        run_processes(_run, world_size, folder, args=(world_size, free_port()), timeout=JOIN_TIMEOUT_S)
    load = lambda name: torch.load(folder / f'{name}.pth', weights_only=False)
    return load('world1-rank0'), [load(f'world2-rank{rank}') for rank in range(WORLD_SIZE)]


def test_two_processes_take_the_same_step_as_one_process_on_the_concatenated_batch(runs):
    single, ranks = runs
    assert single['wrapped'] == 'Mirrored' and all(r['wrapped'] == 'DistributedDataParallel' for r in ranks)
    assert single['steps'] == 1 and all(r['steps'] == 1 for r in ranks)
    assert all(r['converted'] > 0 for r in ranks), 'sync_batchnorm should convert the batch norms'
    # together the two processes saw exactly the single process's batch, in its order
    torch.testing.assert_close(torch.cat([r['indices'] for r in ranks]), single['indices'])
    for rank in ranks:
        for name, value in single['state'].items():
            torch.testing.assert_close(rank['state'][name], value, atol=2e-5, rtol=1e-4,
                                       msg=lambda m, name=name: f'{name}: {m}')


def test_the_step_changed_the_weights(runs):
    "Guards the test above against comparing two untrained copies: the same seed builds the same initial method."
    import copy
    from sslcourse.data import get_data
    from sslcourse.core import seed_everything
    from sslcourse.methods.contrastive.simclr import SimCLR
    from sslcourse.models import create_encoder
    data = get_data(limit=2); seed_everything(0)
    initial = SimCLR(create_encoder('convnet', 1), 28, data.mean, data.std).state_dict()
    single, _ = runs
    moved = [name for name, value in initial.items() if value.is_floating_point() and not torch.equal(value, single['state'][name])]
    assert len(moved) > len(initial) // 2, moved


def test_the_processes_see_disjoint_images_and_draw_different_augmentations(runs):
    _, (first, second) = runs
    assert len(first['indices']) == len(second['indices']) == GLOBAL_BATCH // WORLD_SIZE
    assert not set(first['indices'].tolist()) & set(second['indices'].tolist())
    assert not torch.allclose(first['augmented'], second['augmented']), 'each process must draw its own crops'
    torch.testing.assert_close(first['after_views'], second['after_views'], msg='the global stream must stay shared')


def test_memory_bank_and_queue_updates_are_gathered_from_every_process(runs):
    single, (first, second) = runs
    torch.testing.assert_close(first['bank'], second['bank'])
    torch.testing.assert_close(first['queue'], second['queue'])
    assert first['pointer'] == 4 and single['pointer'] == 2, 'two rows from each process'
    changed = lambda result: set((result['bank'] != single['bank']).any(1).nonzero().flatten().tolist())
    # alone, rank 0 wrote rows 0 and 4; with two processes rows 1 and 5 (the other process's) changed too
    assert changed(first) == {1, 5}
