"""Bad data gets one line: IDX files of the wrong rank, labels outside the classes, images that are not square and
splits with no images are each a one-line `UsageError` that says what was wrong and what would work."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from sslcourse.core import UsageError
from sslcourse.data import GPUBatches, ImageData, Split, dataloaders, get_data

FASHION_PREFIXES = ('train', 't10k')


def idx_bytes(array: np.ndarray) -> bytes:
    "An IDX file of unsigned bytes: zero, zero, type 0x08, the rank, each size as a big-endian uint32, then the values."
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(size.to_bytes(4, 'big') for size in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fashion(folder: Path, train_count: int = 20, test_count: int = 10, side=(6, 6), seed: int = 0) -> Path:
    "A tiny Fashion-MNIST folder in its real format: four gzipped IDX files, labels 0..9 in turn."
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in zip(FASHION_PREFIXES, (train_count, test_count)):
        images = rng.integers(0, 256, size=(count, *side), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        write_idx(folder / f'{prefix}-images-idx3-ubyte.gz', images)
        write_idx(folder / f'{prefix}-labels-idx1-ubyte.gz', labels)
    return folder


def write_idx(path: Path, array: np.ndarray) -> None:
    path.write_bytes(gzip.compress(idx_bytes(array)))


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    "The message is a single line and holds every fragment."
    message = str(error.value)
    assert '\n' not in message, message
    for fragment in fragments:
        assert fragment in message, message


def tiny_data(labels=(0, 1, 2, 0, 1, 2), height: int = 4, width: int = 4, classes=('a', 'b', 'c')) -> ImageData:
    images = torch.zeros(len(labels), 1, height, width, dtype=torch.uint8)
    split = Split(images, torch.tensor(labels, dtype=torch.int64))
    return ImageData('tiny', split, split, list(classes))


def test_the_fixture_loads(tmp_path):
    data = get_data('fashion_mnist', root=write_fashion(tmp_path / 'fashion'))
    assert (len(data.train), len(data.test), data.size, data.channels) == (20, 10, 6, 1)


# --- IDX files of the wrong rank ---------------------------------------------------------------------------------

def test_a_labels_file_given_as_images_names_the_file_and_the_rank(tmp_path):
    folder = write_fashion(tmp_path / 'fashion')
    images = folder / 'train-images-idx3-ubyte.gz'
    images.write_bytes((folder / 'train-labels-idx1-ubyte.gz').read_bytes())  # the labels file copied over the images
    with pytest.raises(UsageError) as error:
        get_data('fashion_mnist', root=folder)
    assert_one_line(error, str(images), '1-D', '3-D', '(count, height, width)')


def test_two_dimensional_images_name_the_file(tmp_path):
    folder = write_fashion(tmp_path / 'fashion')
    images = folder / 't10k-images-idx3-ubyte.gz'
    write_idx(images, np.zeros((10, 36), dtype=np.uint8))  # flattened rows instead of 6 x 6 images
    with pytest.raises(UsageError) as error:
        get_data('fashion_mnist', root=folder)
    assert_one_line(error, str(images), '2-D', '3-D')


def test_images_given_as_labels_name_the_labels_file(tmp_path):
    folder = write_fashion(tmp_path / 'fashion')
    labels = folder / 'train-labels-idx1-ubyte.gz'
    write_idx(labels, np.zeros((20, 6, 6), dtype=np.uint8))
    with pytest.raises(UsageError) as error:
        get_data('fashion_mnist', root=folder)
    assert_one_line(error, str(labels), '3-D', '1-D')


# --- labels outside the classes ----------------------------------------------------------------------------------

def test_idx_labels_beyond_the_classes_name_the_file(tmp_path):
    folder = write_fashion(tmp_path / 'fashion')
    labels = folder / 'train-labels-idx1-ubyte.gz'
    write_idx(labels, np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 1 + [10] + [0] * 9, dtype=np.uint8))
    with pytest.raises(UsageError) as error:
        get_data('fashion_mnist', root=folder)
    assert_one_line(error, str(labels), '10', '0..9')


@pytest.mark.parametrize('bad', [3, 7, -2])
def test_image_data_rejects_labels_outside_the_classes(bad):
    with pytest.raises(UsageError) as error:
        tiny_data(labels=(0, 1, 2, bad))
    assert_one_line(error, 'tiny', 'train', str(bad), '3 classes', '0..2', '-1')


def test_minus_one_is_an_unlabeled_image():
    data = tiny_data(labels=(0, 1, 2, -1))
    assert data.train.labels.tolist() == [0, 1, 2, -1]


# --- images that are not square ----------------------------------------------------------------------------------

def test_non_square_idx_images_name_the_file(tmp_path):
    folder = write_fashion(tmp_path / 'fashion', side=(6, 4))
    with pytest.raises(UsageError) as error:
        get_data('fashion_mnist', root=folder)
    assert_one_line(error, str(folder / 'train-images-idx3-ubyte.gz'), '6x4', 'square')


def test_image_data_rejects_images_that_are_not_square():
    with pytest.raises(UsageError) as error:
        tiny_data(height=4, width=5)
    assert_one_line(error, 'tiny', 'train', '4x5', 'square', '4x4')


def test_image_data_rejects_images_without_a_channel_axis():
    split = Split(torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(UsageError) as error:
        ImageData('tiny', split, split, ['a'])
    assert_one_line(error, 'tiny', 'train', '(3, 4, 4)', '(count, channels, height, width)')


# --- splits with no images ---------------------------------------------------------------------------------------

def test_limit_zero_is_a_usage_error_not_a_batch_size_hint():
    with pytest.raises(UsageError) as error:
        get_data('fashion_mnist_small', limit=0)
    assert_one_line(error, 'limit', 'at least 1', '0')
    assert 'or less' not in str(error.value)


def test_a_negative_limit_is_a_usage_error():
    with pytest.raises(UsageError) as error:
        get_data('fashion_mnist_small', limit=-3)
    assert_one_line(error, 'limit', 'at least 1', '-3')


@pytest.mark.parametrize('prefix, split', [('train', 'train'), ('t10k', 'test')])
def test_an_idx_file_with_no_images_names_the_file_and_the_split(tmp_path, prefix, split):
    folder = write_fashion(tmp_path / 'fashion')
    write_idx(folder / f'{prefix}-images-idx3-ubyte.gz', np.zeros((0, 6, 6), dtype=np.uint8))
    write_idx(folder / f'{prefix}-labels-idx1-ubyte.gz', np.zeros((0,), dtype=np.uint8))
    with pytest.raises(UsageError) as error:
        get_data('fashion_mnist', root=folder)
    assert_one_line(error, str(folder / f'{prefix}-images-idx3-ubyte.gz'), 'no images', split)


@pytest.mark.parametrize('empty_split, words', [('train', 'training'), ('test', 'test')])
def test_image_data_with_an_empty_split_says_so(empty_split, words):
    empty = Split(torch.zeros(0, 1, 4, 4, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    full = Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]))
    splits = {'train': full, 'test': full, empty_split: empty}
    with pytest.raises(UsageError) as error:
        ImageData('tiny', splits['train'], splits['test'], ['a', 'b'])
    assert_one_line(error, 'tiny', f'no {words} images')
    assert 'or less' not in str(error.value)


def test_an_empty_split_to_train_on_is_named():
    data = tiny_data()
    data.unlabeled = Split(torch.zeros(0, 1, 4, 4, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(UsageError) as error:
        dataloaders(data, bs=2, device='cpu', split='unlabeled')
    assert_one_line(error, 'tiny', "'unlabeled'", 'no images')
    assert 'or less' not in str(error.value)


def test_batches_of_an_empty_split_say_it_is_empty():
    empty = Split(torch.zeros(0, 1, 4, 4, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(UsageError) as error:
        GPUBatches(empty, 8, 'cpu')
    assert_one_line(error, 'no images')
    assert 'or less' not in str(error.value)
