"""Write tiny copies of CIFAR-10/100, STL-10 and Imagenette in their real on-disk formats.

Each writer returns what it wrote, in the order the loaders return it, so a
test can check a loader's output exactly (CIFAR, STL-10) or closely (JPEG).
"""
from __future__ import annotations
import gzip

import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
IMAGENETTE_WNIDS = [
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888605",
]


def _random_images(rng: np.random.Generator, count: int, side: int) -> np.ndarray:
    """Random uint8 images (count, 3, side, side): noise has no symmetry, so any transposition shows."""
    return rng.integers(0, 256, size=(count, 3, side, side), dtype=np.uint8)


def _write_pickle(path: Path, entry: dict) -> None:
    """Pickle with protocol 2, the newest one Python 2 could read, as in the official CIFAR files."""
    with open(path, "wb") as file:
        pickle.dump(entry, file, protocol=2)


def _cifar_batch(images: np.ndarray, labels: np.ndarray, label_key: str, batch_label: str) -> dict:
    """One CIFAR batch dict: rows of 3072 bytes, the 32x32 red plane then green then blue, each row-major."""
    entry = {
        "batch_label": batch_label,
        label_key: [int(label) for label in labels],
        "data": images.reshape(len(images), -1),
        "filenames": [f"image_{index:05d}.png" for index in range(len(images))],
    }
    if label_key == "fine_labels":
        entry["coarse_labels"] = [int(label) // 5 for label in labels]
    return entry


def write_cifar(root, name: str, n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict:
    """Write a tiny CIFAR-10 or CIFAR-100 under `root`; return its images (N,3,32,32), labels and classes."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, label_key, classes = Path(root) / "cifar-10-batches-py", "labels", CIFAR10_CLASSES
    elif name == "cifar100":
        folder, label_key = Path(root) / "cifar-100-python", "fine_labels"
        classes = [f"fine_class_{index:02d}" for index in range(100)]
    else:
        raise ValueError(f"unknown CIFAR dataset {name!r}")
    folder.mkdir(parents=True, exist_ok=True)
    train_images, test_images = _random_images(rng, n_train, 32), _random_images(rng, n_test, 32)
    train_labels = rng.integers(0, len(classes), size=n_train)
    test_labels = rng.integers(0, len(classes), size=n_test)

    if name == "cifar10":
        # The training set is spread over five batch files; uneven sizes are fine for the reader.
        parts = np.array_split(np.arange(n_train), 5)
        for number, indices in enumerate(parts, start=1):
            entry = _cifar_batch(train_images[indices], train_labels[indices], label_key,
                                 f"training batch {number} of 5")
            _write_pickle(folder / f"data_batch_{number}", entry)
        _write_pickle(folder / "test_batch", _cifar_batch(test_images, test_labels, label_key,
                                                          "testing batch 1 of 1"))
        _write_pickle(folder / "batches.meta",
                      {"num_cases_per_batch": 10000, "label_names": classes, "num_vis": 3072})
    else:
        _write_pickle(folder / "train", _cifar_batch(train_images, train_labels, label_key,
                                                     "training batch 1 of 1"))
        _write_pickle(folder / "test", _cifar_batch(test_images, test_labels, label_key,
                                                    "testing batch 1 of 1"))
        coarse = [f"coarse_class_{index:02d}" for index in range(20)]
        _write_pickle(folder / "meta", {"fine_label_names": classes, "coarse_label_names": coarse})

    return {
        "train_images": torch.from_numpy(train_images),
        "train_labels": torch.from_numpy(train_labels.astype(np.int64)),
        "test_images": torch.from_numpy(test_images),
        "test_labels": torch.from_numpy(test_labels.astype(np.int64)),
        "classes": list(classes),
        "folder": folder,
    }


def stl10_bytes(images: np.ndarray) -> bytes:
    """STL-10 image bytes: per image and channel the 96x96 plane in column-major order (column by column)."""
    return np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes()


def write_stl10(root, n_train: int = 10, n_test: int = 10, n_unlabeled: int = 10, seed: int = 0) -> dict:
    """Write a tiny STL-10 `stl10_binary/` under `root`; return its images as (N,3,96,96) rows, and labels."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    train_images, test_images = _random_images(rng, n_train, 96), _random_images(rng, n_test, 96)
    unlabeled_images = _random_images(rng, n_unlabeled, 96)
    train_labels = rng.integers(0, 10, size=n_train)
    test_labels = rng.integers(0, 10, size=n_test)

    (folder / "train_X.bin").write_bytes(stl10_bytes(train_images))
    (folder / "test_X.bin").write_bytes(stl10_bytes(test_images))
    (folder / "unlabeled_X.bin").write_bytes(stl10_bytes(unlabeled_images))
    # Label files hold one byte per image, numbered 1..10.
    (folder / "train_y.bin").write_bytes((train_labels + 1).astype(np.uint8).tobytes())
    (folder / "test_y.bin").write_bytes((test_labels + 1).astype(np.uint8).tobytes())
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    # The real archive also has ten lines of training-fold indices; the loaders ignore them.
    folds = np.array_split(np.arange(n_train), 10)
    (folder / "fold_indices.txt").write_text("".join(" ".join(map(str, fold)) + " \n" for fold in folds))

    return {
        "train_images": torch.from_numpy(train_images),
        "train_labels": torch.from_numpy(train_labels.astype(np.int64)),
        "test_images": torch.from_numpy(test_images),
        "test_labels": torch.from_numpy(test_labels.astype(np.int64)),
        "unlabeled_images": torch.from_numpy(unlabeled_images),
        "classes": list(STL10_CLASSES),
        "folder": folder,
    }


def _solid_image(color: tuple[int, int, int], landscape: bool, grayscale: bool) -> Image.Image:
    """A one-colour image, 160 pixels on its shorter side like Imagenette-160, in either orientation."""
    size = (213, 160) if landscape else (160, 240)
    if grayscale:  # Imagenette holds a few grayscale JPEGs; the loader must turn them into RGB
        return Image.new("L", size, color[0])
    return Image.new("RGB", size, color)


def _write_split(folder: Path, n_per_class: int, file_name, rng: np.random.Generator) -> tuple[list, list]:
    """Write n_per_class solid-colour JPEGs per wnid; return labels and RGB colours in loader order."""
    labels, colors = [], []
    for label, wnid in enumerate(IMAGENETTE_WNIDS):
        class_folder = folder / wnid
        class_folder.mkdir(parents=True, exist_ok=True)
        for index in range(n_per_class):
            grayscale = index % 2 == 1
            value = rng.integers(30, 226, size=3)
            color = (int(value[0]),) * 3 if grayscale else tuple(int(channel) for channel in value)
            image = _solid_image(color, landscape=index % 2 == 0, grayscale=grayscale)
            image.save(class_folder / file_name(wnid, label * n_per_class + index), quality=95)
            labels.append(label)
            colors.append(color)
    return labels, colors


def write_imagenette(root, n_per_class: int = 2, seed: int = 0) -> dict:
    """Write a tiny `imagenette2-160/{train,val}/<wnid>/*.JPEG` tree; return labels, colours and wnids."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "imagenette2-160"
    # File names follow the real set's patterns and sort in the order they were written.
    train_labels, train_colors = _write_split(
        folder / "train", n_per_class, lambda wnid, number: f"{wnid}_{number:05d}.JPEG", rng)
    val_labels, val_colors = _write_split(
        folder / "val", n_per_class, lambda wnid, number: f"ILSVRC2012_val_{number:08d}.JPEG", rng)
    return {
        "train_labels": torch.tensor(train_labels, dtype=torch.int64),
        "train_colors": torch.tensor(train_colors, dtype=torch.float32),
        "val_labels": torch.tensor(val_labels, dtype=torch.int64),
        "val_colors": torch.tensor(val_colors, dtype=torch.float32),
        "wnids": list(IMAGENETTE_WNIDS),
        "folder": folder,
    }


def write_fashion_mnist(root, per_class_train: int = 40, per_class_test: int = 20) -> Path:
    "The first images per class of the embedded subset, as Fashion-MNIST's four gzipped IDX files (its real format)."
    from sslcourse.data import get_data
    root = Path(root)
    for prefix, split in (('train', get_data(limit=per_class_train).train), ('t10k', get_data(limit=per_class_test).test)):
        for kind, array in (('images-idx3', split.images[:, 0].numpy()), ('labels-idx1', split.labels.numpy())):
            header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(n).to_bytes(4, 'big') for n in array.shape)
            with gzip.open(root / f'{prefix}-{kind}-ubyte.gz', 'wb') as file: file.write(header + array.astype(np.uint8).tobytes())
    return root
