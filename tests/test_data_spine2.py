"""Spine 2 of `sslcourse.data`: per-class label fractions, IDX robustness, sharded and indexed GPU batches."""
import gzip

import pytest
import torch

from sslcourse.core import UsageError
from sslcourse.data import (GPUBatches, ImageData, Split, dataloaders, get_data, label_subset, read_idx)
from tests.fixtures import write_stl10


def make_data(counts=(40, 30, 30), test_per_class=5, side=4, unlabeled=0) -> ImageData:
    "A tiny dataset whose image i holds the value i (mod 256) everywhere, so a batch shows which images it took."
    labels = torch.cat([torch.full((count,), label) for label, count in enumerate(counts)])
    images = (torch.arange(len(labels)) % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, side, side).contiguous()
    test_labels = torch.arange(len(counts)).repeat_interleave(test_per_class)
    test = Split(torch.zeros(len(test_labels), 1, side, side, dtype=torch.uint8), test_labels)
    extra = Split(torch.full((unlabeled, 1, side, side), 7, dtype=torch.uint8),
                  torch.full((unlabeled,), -1)) if unlabeled else None
    return ImageData('tiny', Split(images, labels), test, [f'class {i}' for i in range(len(counts))], unlabeled=extra)


# --- label fractions -------------------------------------------------------------------------------------------

def test_label_fraction_is_taken_of_each_class():
    labels = torch.cat([torch.zeros(1000, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    assert len(label_subset(labels, fraction=1.0)) == 1100
    kept = labels[label_subset(labels, fraction=0.1, seed=3)]
    assert torch.bincount(kept).tolist() == [100, 10]


def test_label_fraction_keeps_at_least_one_per_class_and_ignores_unlabeled():
    labels = torch.tensor([0] * 300 + [1] * 20 + [-1] * 50)
    kept = labels[label_subset(labels, fraction=0.01)]
    assert torch.bincount(kept).tolist() == [3, 1]


def test_label_fraction_is_seeded():
    labels = torch.arange(10).repeat_interleave(50)
    assert torch.equal(label_subset(labels, fraction=0.2, seed=1), label_subset(labels, fraction=0.2, seed=1))
    assert not torch.equal(label_subset(labels, fraction=0.2, seed=1), label_subset(labels, fraction=0.2, seed=2))


# --- IDX files --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"\x00\x00\x08\x03\x00\x00", b"\x00\x00\x08\x01", b"\x00\x00\x08\x02\x00\x00\x00\x02"])
@pytest.mark.parametrize("zipped", [False, True])
def test_truncated_idx_header_is_a_usage_error(tmp_path, raw, zipped):
    path = tmp_path / ("file-idx3-ubyte.gz" if zipped else "file-idx3-ubyte")
    path.write_bytes(gzip.compress(raw) if zipped else raw)
    with pytest.raises(UsageError) as error:
        read_idx(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_idx_round_trip(tmp_path):
    path = tmp_path / "small-idx3-ubyte.gz"
    body = bytes(range(24))
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
                                   + (4).to_bytes(4, "big") + body))
    assert read_idx(path).shape == (2, 3, 4) and read_idx(path).tobytes() == body


@pytest.fixture
def opened_gzip_files(monkeypatch):
    "Keep every file `gzip.open` returns alive, so a test sees whether the reader closed it (not the collector)."
    opened, real_open = [], gzip.open
    def keeping(*args, **kwargs):
        opened.append(real_open(*args, **kwargs))
        return opened[-1]
    monkeypatch.setattr(gzip, "open", keeping)
    return opened


def test_read_idx_closes_the_gzip_file(tmp_path, opened_gzip_files):
    path = tmp_path / "ok-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x01\x02\x03"))
    read_idx(path)
    assert opened_gzip_files and all(file.closed for file in opened_gzip_files)


def test_read_idx_closes_a_corrupt_gzip_file(tmp_path, opened_gzip_files):
    path = tmp_path / "cut-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (300).to_bytes(4, "big") + bytes(300))[:30])
    with pytest.raises(UsageError):
        read_idx(path)
    assert opened_gzip_files and all(file.closed for file in opened_gzip_files)


# --- GPU batches ------------------------------------------------------------------------------------------------

def test_indices_name_the_images_of_the_batch():
    data = make_data()
    batches = GPUBatches(data.train, 16, 'cpu', indices=True)
    seen = []
    for images, labels, index in batches:
        assert index.dtype == torch.int64
        assert torch.equal(images, data.train.images[index]) and torch.equal(labels, data.train.labels[index])
        seen.append(index)
    seen = torch.cat(seen)
    assert len(seen) == len(batches) * 16 and len(seen.unique()) == len(seen)


def test_batches_without_indices_are_pairs():
    batch = next(iter(GPUBatches(make_data().train, 8, 'cpu')))
    assert len(batch) == 2


def test_two_ranks_split_the_one_process_batch():
    data = make_data()
    single = GPUBatches(data.train, 16, 'cpu', indices=True, seed=4)
    ranks = [GPUBatches(data.train, 8, 'cpu', indices=True, seed=4, rank=rank, world_size=2) for rank in (0, 1)]
    for batches in [single, *ranks]: batches.set_epoch(2)
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 100 // 16
    for whole, first, second in zip(single, *ranks):
        assert not set(first[2].tolist()) & set(second[2].tolist())
        assert torch.equal(torch.cat([first[2], second[2]]), whole[2])
        assert torch.equal(torch.cat([first[0], second[0]]), whole[0])


def test_the_order_depends_on_seed_and_epoch_only():
    split = make_data().train
    def order(seed, epoch, instance=None):
        batches = instance or GPUBatches(split, 10, 'cpu', indices=True, seed=seed)
        batches.set_epoch(epoch)
        return torch.cat([index for _, _, index in batches])
    torch.manual_seed(0); first = order(1, 0)
    torch.manual_seed(123); assert torch.equal(order(1, 0), first)  # the global RNG plays no part
    assert not torch.equal(order(1, 1), first) and not torch.equal(order(2, 0), first)
    reused = GPUBatches(split, 10, 'cpu', indices=True, seed=1)
    assert torch.equal(order(1, 1, reused), order(1, 1))
    # a full pass moves on to the next epoch by itself (plain loops reshuffle); set_epoch goes back
    assert torch.equal(torch.cat([index for _, _, index in reused]), order(1, 2))
    reused.set_epoch(1); assert torch.equal(torch.cat([index for _, _, index in reused]), order(1, 1))
    assert torch.equal(torch.cat([index for _, _, index in GPUBatches(split, 10, 'cpu', indices=True)]), order(0, 0))


def test_unshuffled_batches_follow_the_dataset():
    split = make_data().train
    batches = GPUBatches(split, 32, 'cpu', shuffle=False, drop_last=False, indices=True)
    assert len(batches) == 4
    assert torch.equal(torch.cat([index for _, _, index in batches]), torch.arange(100))


def test_sampler_sets_the_order_and_the_length():
    split = make_data().train
    calls = []
    def only_class_one(count, generator):
        calls.append(count)
        members = torch.arange(40, 70)  # class 1, drawn with repeats
        return members[torch.randint(len(members), (64,), generator=generator, device=generator.device)]
    batches = GPUBatches(split, 16, 'cpu', indices=True, sampler=only_class_one, seed=3)
    assert len(batches) == 4 and calls == [100]
    labels = torch.cat([labels for _, labels, _ in batches])
    assert len(labels) == 64 and (labels == 1).all()
    assert len(calls) == 1  # one call per epoch, shared by len() and the iteration
    ranks = [GPUBatches(split, 8, 'cpu', indices=True, sampler=only_class_one, seed=3, rank=rank, world_size=2)
             for rank in (0, 1)]
    batches.set_epoch(0)  # the pass above moved it on to epoch 1
    assert torch.equal(torch.cat([torch.cat([a[2], b[2]]) for a, b in zip(*ranks)]),
                       torch.cat([index for _, _, index in batches]))


def test_sampler_shorter_than_a_batch_is_a_usage_error():
    batches = GPUBatches(make_data().train, 16, 'cpu', sampler=lambda count, generator: torch.arange(5))
    with pytest.raises(UsageError, match="sampler"):
        len(batches)


def test_too_few_images_for_the_global_batch():
    split = make_data().train
    with pytest.raises(UsageError) as error:
        GPUBatches(split, 60, 'cpu', world_size=2)
    assert "--bs 50" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UsageError):
        GPUBatches(split, 8, 'cpu', rank=2, world_size=2)


def test_dataloaders_split_inputs_from_targets():
    data = make_data()
    dls = dataloaders(data, bs=16, device='cpu', indices=True)
    assert dls.n_inp == 1
    images, labels, index = next(iter(dls.train))
    assert torch.equal(images, data.train.images[index])
    assert all(len(batch) == 2 for batch in dls.valid)
    assert sum(len(labels) for _, labels in dls.valid) == len(data.test)
    assert len(next(iter(dataloaders(data, bs=16, device='cpu').train))) == 2


def test_fastai_gives_the_model_images_and_the_loss_labels_and_indices():
    from fastai.learner import Learner
    data = make_data()
    dls = dataloaders(data, bs=16, device='cpu', indices=True)
    seen = {}
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__(); self.linear = torch.nn.Linear(16, 3)
        def forward(self, *inputs):
            seen['inputs'] = len(inputs); return self.linear(inputs[0].float().flatten(1))
    def loss(prediction, *targets):
        seen['targets'] = len(targets); return torch.nn.functional.cross_entropy(prediction, targets[0])
    learn = Learner(dls, Model(), loss_func=loss)
    learn._split(next(iter(dls.train)))
    assert len(learn.xb) == 1 and len(learn.yb) == 2
    learn._split(next(iter(dls.valid)))
    assert len(learn.xb) == 1 and len(learn.yb) == 1


def test_dataloaders_train_plus_unlabeled():
    data = make_data(unlabeled=20)
    dls = dataloaders(data, bs=20, device='cpu', split='train+unlabeled', indices=True)
    assert len(dls.train) == 120 // 20
    labels = torch.cat([labels for _, labels, _ in dls.train])
    assert (labels == -1).sum() == 20 and (labels >= 0).sum() == 100
    assert len(dataloaders(data, bs=20, device='cpu', split='unlabeled').train) == 1


@pytest.mark.parametrize("split", ["test", "unlabelled", "train+unlabeled"])
def test_unknown_or_missing_split_is_a_usage_error(split):
    with pytest.raises(UsageError) as error:
        dataloaders(make_data(), bs=8, device='cpu', split=split)
    message = str(error.value)
    assert "'train'" in message and "'unlabeled'" in message and "'train+unlabeled'" in message


def test_stl10_train_plus_unlabeled(tmp_path):
    written = write_stl10(tmp_path, n_train=6, n_test=4, n_unlabeled=10)
    data = get_data('stl10', root=tmp_path)
    dls = dataloaders(data, bs=4, device='cpu', split='train+unlabeled', indices=True)
    assert len(dls.train) == 16 // 4
    everything = torch.cat([written['train_images'], written['unlabeled_images']])
    for images, labels, index in dls.train:
        assert torch.equal(images, everything[index])
        assert torch.equal(labels, torch.where(index < 6, written['train_labels'][index.clamp(max=5)], -1))


# --- a validation split carved from train -----------------------------------------------------------------------

def test_with_validation_is_a_stratified_held_out_part_of_train():
    data = make_data(counts=(40, 30, 30), unlabeled=5)
    held = data.with_validation(0.1, seed=1)
    assert torch.bincount(held.test.labels).tolist() == [4, 3, 3]
    assert torch.bincount(held.train.labels).tolist() == [36, 27, 27]
    # disjoint, and together exactly the training split (each image holds its own index)
    ids = torch.cat([held.train.images[:, 0, 0, 0], held.test.images[:, 0, 0, 0]]).long()
    assert sorted(ids.tolist()) == list(range(100))
    assert held.mean == data.mean and held.std == data.std and held.classes == data.classes
    assert held.unlabeled is data.unlabeled and len(data.test) == 15  # the original is untouched
    assert torch.equal(held.test.images, data.with_validation(0.1, seed=1).test.images)
    assert not torch.equal(held.test.images, data.with_validation(0.1, seed=2).test.images)
    for bad in (0, 1, 1.5):
        with pytest.raises(UsageError):
            data.with_validation(bad)
