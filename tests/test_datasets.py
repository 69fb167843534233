"""Round-trip the dataset loaders through fixtures written in each dataset's real format."""
import socket

import numpy as np
import pytest
import torch

from sslcourse.core import UsageError
from sslcourse.data import load_cifar, load_imagenette, load_stl10, get_data
from tests.fixtures import write_cifar, write_imagenette, write_stl10

IMAGENETTE_CLASSES = [
    "tench", "English springer", "cassette player", "chain saw", "church",
    "French horn", "garbage truck", "gas pump", "golf ball", "parachute",
]


class NetworkBlocked(OSError):
    """Raised instead of opening a connection; an OSError, like a real network failure."""


@pytest.fixture(autouse=True)
def network_attempts(request, monkeypatch):
    """Record and refuse every connection; unless a test is marked `tries_network`, it must make none."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise NetworkBlocked("network blocked in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    if not request.node.get_closest_marker("tries_network"):
        assert not attempts, "a loader used the network"


def assert_one_line_usage_error(error: pytest.ExceptionInfo, *fragments: str) -> None:
    """The message is a single line and names everything the user needs."""
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def assert_split(split, images, labels):
    """A loaded split holds exactly the given uint8 images and int64 labels."""
    assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
    assert split.images.is_contiguous()
    assert torch.equal(split.images, images)
    assert torch.equal(split.labels, labels)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_round_trip(tmp_path, name):
    written = write_cifar(tmp_path, name, n_train=23, n_test=7)
    train, test, classes = load_cifar(tmp_path, name)
    assert train.images.shape == (23, 3, 32, 32)
    assert_split(train, written["train_images"], written["train_labels"])
    assert_split(test, written["test_images"], written["test_labels"])
    assert classes == written["classes"]
    assert len(classes) == (10 if name == "cifar10" else 100)


def test_cifar_pixel_layout_matches_the_documented_format(tmp_path):
    """Independent of torchvision: byte 1024*c + 32*row + col of a data row is pixel (c, row, col)."""
    written = write_cifar(tmp_path, "cifar10", n_train=5, n_test=1)
    train, _, _ = load_cifar(tmp_path, "cifar10")
    row = np.asarray(written["train_images"][0]).reshape(-1)  # first image of data_batch_1
    channel, y, x = 2, 3, 30
    assert train.images[0, channel, y, x] == row[1024 * channel + 32 * y + x]


def test_cifar_missing_folder(tmp_path):
    with pytest.raises(UsageError) as error:
        load_cifar(tmp_path, "cifar10")
    assert_one_line_usage_error(error, str(tmp_path / "cifar-10-batches-py"), "download=True")


def test_cifar_missing_batch_names_the_file(tmp_path):
    written = write_cifar(tmp_path, "cifar10")
    (written["folder"] / "data_batch_4").unlink()
    with pytest.raises(UsageError) as error:
        load_cifar(tmp_path, "cifar10")
    assert_one_line_usage_error(error, str(written["folder"] / "data_batch_4"))


@pytest.mark.parametrize("name, file_name", [("cifar10", "data_batch_3"), ("cifar100", "test"),
                                             ("cifar10", "batches.meta")])
def test_cifar_truncated_file(tmp_path, name, file_name):
    written = write_cifar(tmp_path, name)
    path = written["folder"] / file_name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UsageError) as error:
        load_cifar(tmp_path, name)
    assert_one_line_usage_error(error, str(path), "corrupt or truncated")


def test_cifar_unknown_name(tmp_path):
    with pytest.raises(UsageError) as error:
        load_cifar(tmp_path, "cifar11")
    assert_one_line_usage_error(error, "cifar11", "'cifar10'")


def test_stl10_fixture_is_column_major(tmp_path):
    """Independent of torchvision: byte 9216*c + 96*col + row of an image is pixel (c, row, col)."""
    written = write_stl10(tmp_path, n_train=2, n_test=1, n_unlabeled=1)
    raw = np.frombuffer((written["folder"] / "train_X.bin").read_bytes(), dtype=np.uint8)
    image = written["train_images"][0]
    channel, row, col = 1, 5, 90
    assert raw[9216 * channel + 96 * col + row] == image[channel, row, col]
    assert not torch.equal(image, image.transpose(1, 2))  # a transposition would be visible


def test_stl10_round_trip(tmp_path):
    written = write_stl10(tmp_path, n_train=12, n_test=5, n_unlabeled=7)
    train, test, classes, unlabeled = load_stl10(tmp_path, unlabeled=True)
    assert train.images.shape == (12, 3, 96, 96)
    assert_split(train, written["train_images"], written["train_labels"])
    assert_split(test, written["test_images"], written["test_labels"])
    assert_split(unlabeled, written["unlabeled_images"], torch.full((7,), -1, dtype=torch.int64))
    assert classes == written["classes"]


def test_stl10_without_unlabeled_file(tmp_path):
    """The 2.7 GB unlabeled file is optional when it is not asked for."""
    written = write_stl10(tmp_path)
    (written["folder"] / "unlabeled_X.bin").unlink()
    train, _, _, unlabeled = load_stl10(tmp_path)
    assert unlabeled is None and len(train.images) == 10
    with pytest.raises(UsageError) as error:
        load_stl10(tmp_path, unlabeled=True)
    assert_one_line_usage_error(error, str(written["folder"] / "unlabeled_X.bin"))


def test_stl10_missing_folder(tmp_path):
    with pytest.raises(UsageError) as error:
        load_stl10(tmp_path)
    assert_one_line_usage_error(error, str(tmp_path / "stl10_binary"), "download=True")


@pytest.mark.parametrize("file_name", ["train_X.bin", "test_y.bin"])
def test_stl10_truncated_file(tmp_path, file_name):
    written = write_stl10(tmp_path)
    path = written["folder"] / file_name
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(UsageError) as error:
        load_stl10(tmp_path)
    assert_one_line_usage_error(error, str(path), "corrupt or truncated")


def test_stl10_label_out_of_range(tmp_path):
    written = write_stl10(tmp_path)
    path = written["folder"] / "train_y.bin"
    path.write_bytes(b"\x00" + path.read_bytes()[1:])  # labels are 1..10, so 0 is invalid
    with pytest.raises(UsageError) as error:
        load_stl10(tmp_path)
    assert_one_line_usage_error(error, str(path))


def test_imagenette_shapes_labels_and_names(tmp_path):
    written = write_imagenette(tmp_path, n_per_class=2)
    train, val, classes = load_imagenette(tmp_path, size=48)
    assert classes == IMAGENETTE_CLASSES
    for split, labels, colors in ((train, written["train_labels"], written["train_colors"]),
                                  (val, written["val_labels"], written["val_colors"])):
        assert split.images.shape == (20, 3, 48, 48) and split.images.dtype == torch.uint8
        assert torch.equal(split.labels, labels)
        # Solid colours survive JPEG and resizing closely, which checks the image-to-label pairing.
        mean_colors = split.images.float().mean(dim=(2, 3))
        assert (mean_colors - colors).abs().max() < 4


def test_imagenette_crop_is_square_from_both_orientations(tmp_path):
    """Landscape and portrait sources both come out size x size."""
    write_imagenette(tmp_path, n_per_class=2)
    train, _, _ = load_imagenette(tmp_path, size=96)
    assert train.images.shape[1:] == (3, 96, 96)


def test_imagenette_missing_folder(tmp_path):
    with pytest.raises(UsageError) as error:
        load_imagenette(tmp_path)
    assert_one_line_usage_error(error, str(tmp_path / "imagenette2-160"), "download=True")


def test_imagenette_truncated_jpeg(tmp_path):
    written = write_imagenette(tmp_path, n_per_class=1)
    path = next((written["folder"] / "val" / written["wnids"][3]).iterdir())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UsageError) as error:
        load_imagenette(tmp_path)
    assert_one_line_usage_error(error, str(path), "corrupt or truncated")


def test_imagenette_bad_size(tmp_path):
    write_imagenette(tmp_path, n_per_class=1)
    with pytest.raises(UsageError) as error:
        load_imagenette(tmp_path, size=0)
    assert_one_line_usage_error(error, "size", "64")


def test_download_true_is_offline_when_data_is_present(tmp_path):
    """download=True only goes online for missing files, so a complete folder loads without a network."""
    write_cifar(tmp_path, "cifar100")
    write_stl10(tmp_path)
    write_imagenette(tmp_path, n_per_class=1)
    assert len(load_cifar(tmp_path, "cifar100", download=True)[0].images) == 20
    assert load_stl10(tmp_path, download=True, unlabeled=True)[3] is not None
    assert len(load_imagenette(tmp_path, size=32, download=True)[0].images) == 10


@pytest.mark.tries_network
@pytest.mark.parametrize("load", [lambda root: load_cifar(root, "cifar10", download=True),
                                  lambda root: load_stl10(root, download=True)])
def test_failed_download_is_a_usage_error(tmp_path, network_attempts, load):
    with pytest.raises(UsageError) as error:
        load(tmp_path / "data")
    assert_one_line_usage_error(error, "could not download", str(tmp_path / "data"))
    assert network_attempts


@pytest.mark.tries_network
def test_failed_imagenette_download_is_a_usage_error(tmp_path, network_attempts, monkeypatch):
    monkeypatch.setenv("FASTAI_HOME", str(tmp_path / "fastai_home"))  # keep fastai's config out of $HOME
    with pytest.raises(UsageError) as error:
        load_imagenette(tmp_path / "data", download=True)
    assert_one_line_usage_error(error, "could not download imagenette", str(tmp_path / "data"))
    assert network_attempts
