"""Tests of tas.data: registry, IDX reading, datasets, train/val split and loaders."""
from __future__ import annotations

import gzip
import os
import struct
from collections import Counter

import numpy as np
import pytest
import torch

from tas.data import (
    FASHION_MNIST_DIR, create_dataset, create_loaders, dataset_info, list_datasets, read_idx,
    split_train_val,
)
from tas.errors import DataError

def write_idx(path, array: np.ndarray, code: int = 0x08) -> None:
    data = struct.pack(">BBBB", 0, 0, code, array.ndim)
    data += struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(data)


@pytest.fixture
def idx_dir(tmp_path):
    """20 train / 10 test random 28x28 images, train gzipped and test plain."""
    rng = np.random.default_rng(0)
    for prefix, n, ext in (("train", 20, ".gz"), ("t10k", 10, "")):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{ext}",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return tmp_path


# --- registry ---------------------------------------------------------------------------------

def test_registry_and_unknown_name():
    assert set(list_datasets()) == {"digits", "fashion-mnist", "mnist", "cifar10", "cifar100",
                                    "imagefolder"}
    with pytest.raises(DataError, match="unknown dataset 'nope'.*cifar10.*fashion-mnist"):
        create_dataset("nope", "train")
    with pytest.raises(DataError, match="unknown split"):
        create_dataset("digits", "validation")
    info = dataset_info("cifar100")
    assert (info.num_classes, info.in_chans, info.img_size) == (100, 3, 32)
    assert dataset_info("fashion_mnist", img_size=32).img_size == 32


# --- split_train_val --------------------------------------------------------------------------

def test_split_train_val():
    targets = np.repeat(np.arange(5), [10, 11, 7, 1, 20])
    train, val = split_train_val(targets, seed=0)
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(len(targets)))
    ct, cv = Counter(targets[train]), Counter(targets[val])
    for c in range(5):
        assert 0 <= ct[c] - cv[c] <= 1  # odd leftover to train
    assert split_train_val(targets.tolist(), seed=0) == (train, val)
    assert split_train_val(targets, seed=1) != (train, val)


# --- read_idx ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["", ".gz"])
@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (">i4", 0x0C), (">f4", 0x0D)])
def test_read_idx_round_trip(tmp_path, ext, dtype, code):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(dtype)
    write_idx(tmp_path / f"a{ext}", array, code)
    out = read_idx(tmp_path / f"a{ext}")
    assert out.shape == (2, 3, 4) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_rejects_bad_files(tmp_path):
    write_idx(tmp_path / "a", np.zeros((4, 5), np.uint8))
    data = (tmp_path / "a").read_bytes()
    (tmp_path / "short").write_bytes(data[:-3])
    with pytest.raises(DataError, match="short.*truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(data + b"x")
    with pytest.raises(DataError, match="extra bytes"):
        read_idx(tmp_path / "long")
    (tmp_path / "magic").write_bytes(b"\x01\x02" + data[2:])
    with pytest.raises(DataError, match="magic.*not an IDX|not an IDX.*magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(data)[:-10])
    with pytest.raises(DataError, match="bad.gz"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(DataError, match="missing_file"):
        read_idx(tmp_path / "missing_file")


# --- IDX datasets -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_dataset(idx_dir, name):
    torch.manual_seed(0)
    train = create_dataset(name, "train", str(idx_dir))
    test = create_dataset(name, "test", str(idx_dir), augment=True)  # ignored for test
    assert (len(train), len(test)) == (20, 10)
    assert list(train.targets) == [i % 10 for i in range(20)]
    x, y = test[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 3 and isinstance(y, int)
    assert torch.equal(test[3][0], x)
    raw = torch.from_numpy(read_idx(idx_dir / "t10k-images-idx3-ubyte")[3]).float() / 255
    info = dataset_info(name)
    torch.testing.assert_close(x[0], (raw - info.mean[0]) / info.std[0])
    assert any(not torch.equal(train[0][0], train[0][0]) for _ in range(10))
    assert create_dataset(name, "test", str(idx_dir), img_size=32)[0][0].shape == (1, 32, 32)


def _augment_one_by_one(images, info, pad, flip, size):
    """The per-image augmentation the loaders made before batches were augmented whole: the
    reference a batch must match bit for bit (same draws, same order)."""
    mean, std = torch.tensor(info.mean).view(-1, 1, 1), torch.tensor(info.std).view(-1, 1, 1)
    out = []
    for x in images:
        x = x.float() / 255
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        if pad:
            h, w = x.shape[-2:]
            i, j = torch.randint(0, 2 * pad + 1, (2,)).tolist()
            x = torch.nn.functional.pad(x, (pad,) * 4)[:, i:i + h, j:j + w]
        if flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        out.append((x - mean) / std)
    return torch.stack(out)


@pytest.mark.parametrize("size", [28, 36])
def test_batch_augmentation_matches_per_image_draws(idx_dir, size):
    """A seeded loader gives exactly the batches per-image augmentation gave (so every seeded run
    and published figure reproduces), including the resize; and each image its own crop and flip."""
    subset = create_loaders("fashion-mnist", data_dir=str(idx_dir), batch_size=8, img_size=size)["train"].dataset
    ds = subset.dataset
    assert ds.pad == (2 if size == 28 else 3) and ds.flip
    batches = iter(torch.utils.data.DataLoader(subset, batch_size=8))  # its base seed drawn before ours
    torch.manual_seed(7)
    got = torch.cat([x for x, _ in batches])
    raw = torch.from_numpy(read_idx(idx_dir / "train-images-idx3-ubyte.gz")).unsqueeze(1)
    torch.manual_seed(7)
    want = _augment_one_by_one(raw[list(subset.indices)], dataset_info("fashion-mnist"), ds.pad, True, size)
    assert torch.equal(got, want)
    two = torch.utils.data.Subset(ds, torch.tensor([3, 5]))  # tensor indices, a batch under 32
    assert [y for _, y in two.__getitems__([0, 1])] == [ds.targets[3], ds.targets[5]]
    shifts, flips = ds._draw(64)
    assert len(set(map(tuple, shifts.tolist()))) > 5 and 0 < int(flips.sum()) < 64


def test_idx_missing_files(tmp_path, idx_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*train-labels-idx1-ubyte.*empty"):
        create_dataset("mnist", "train", str(empty))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        create_dataset("fashion-mnist", "test", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="--data-dir"):
        create_dataset("mnist", "train")
    os.remove(idx_dir / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        create_dataset("mnist", "test", str(idx_dir), download=True)


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR),
                    reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    train, test = create_dataset("fashion-mnist", "train"), create_dataset("fashion-mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    assert sorted(set(test.targets)) == list(range(10))


# --- digits -----------------------------------------------------------------------------------

def test_digits():
    train, test = create_dataset("digits", "train"), create_dataset("digits", "test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert set(train.targets) == set(test.targets) == set(range(10))
    x, y = test[0]
    assert x.shape == (1, 32, 32) and torch.equal(test[0][0], x)
    assert create_dataset("digits", "test").targets == test.targets  # fixed split
    assert create_dataset("digits", "test", img_size=16)[0][0].shape == (1, 16, 16)


# --- CIFAR ------------------------------------------------------------------------------------

def test_cifar_missing(tmp_path):
    with pytest.raises(DataError, match="--download.*cifar-10-batches-py"):
        create_dataset("cifar10", "train", str(tmp_path))
    with pytest.raises(DataError, match="--data-dir"):
        create_dataset("cifar100", "test")


# --- imagefolder ------------------------------------------------------------------------------

def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    assert dataset_info("imagefolder", str(tmp_path)).num_classes == 2
    for split in ("train", "test"):
        ds = create_dataset("imagefolder", split, str(tmp_path), img_size=32)
        x, y = ds[5]
        assert len(ds) == 6 and x.shape == (3, 32, 32) and y == 1
    with pytest.raises(DataError, match="class folders"):
        dataset_info("imagefolder", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="--data-dir"):
        create_dataset("imagefolder", "train")


# --- loaders ----------------------------------------------------------------------------------

def test_create_loaders_search_split():
    loaders = create_loaders("digits", batch_size=16, search_split=True, seed=3)
    assert set(loaders) == {"train", "val", "test"}
    a, b = loaders["train"].dataset.indices, loaders["val"].dataset.indices
    assert not set(a) & set(b) and len(a) + len(b) == 1437
    x, y = next(iter(loaders["train"]))
    assert x.shape == (16, 1, 32, 32) and y.dtype == torch.int64

    small = create_loaders("digits", search_split=True, limit=30)
    assert all(len(loader.dataset) == 30 for loader in small.values())
    assert set(small["train"].dataset.indices).isdisjoint(small["val"].dataset.indices)
    assert sorted(Counter(small["test"].dataset.targets).values()) == [3] * 10  # class-balanced

    def order():
        return [y.tolist() for _, y in create_loaders("digits", seed=5, limit=40)["train"]]
    assert order() == order()  # shuffle order is a function of the seed
