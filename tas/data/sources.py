"""The built-in datasets, registered on import: digits, Fashion-MNIST, MNIST, CIFAR-10/100, imagefolder.

The in-memory ones are :class:`TensorImageDataset`; the MNIST-style ones read IDX files
(:func:`read_idx`); CIFAR and imagefolder are torchvision's, with ``v2`` transforms.
"""
from __future__ import annotations

import gzip
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from ..errors import DataError
from .registry import DatasetInfo, _folder_classes, _register

__all__ = ["FASHION_MNIST_DIR", "TensorImageDataset", "read_idx"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TensorImageDataset(Dataset):
    """Images held in memory as one tensor, augmented with tensor ops a whole batch at a time.

    A loader with batches calls :meth:`__getitems__` (``torch.utils.data.Subset`` passes it on), so
    a batch costs a few tensor ops instead of about ten per image (per image, a batch of 256 took
    12 ms of a GPU machine's CPU beside a 21-ms step). The random draws stay per image, in the order
    the per-image path made them, so a seed gives the same batches either way.

    Args:
        images: ``N x C x H x W``, ``uint8`` (0..255) or float in ``[0, 1]``.
        targets: ``N`` integer labels.
        info: gives the output size and the normalisation.
        pad: random translation by up to ``pad`` pixels (zero padding, then a random crop).
        flip: random horizontal flip with probability 0.5.
    """

    def __init__(self, images: torch.Tensor, targets: Sequence[int], info: DatasetInfo,
                 pad: int = 0, flip: bool = False) -> None:
        self.images = images
        self.targets = [int(t) for t in targets]
        self.img_size = info.img_size
        self.mean = torch.tensor(info.mean).view(-1, 1, 1)
        self.std = torch.tensor(info.std).view(-1, 1, 1)
        self.pad, self.flip = pad, flip

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """The samples at ``indices``, augmented: what the default collate stacks into a batch."""
        indices = [int(i) for i in indices]  # a short list of 0-d tensors would index as a tuple
        x = self.images[indices]
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if x.shape[-1] != self.img_size:
            # Resized per batch: 60k MNIST images stored at e.g. 224 px would take gigabytes.
            x = F.interpolate(x, size=self.img_size, mode="bilinear", align_corners=False)
        shifts, flips = self._draw(len(indices))
        if self.pad:
            n, _, h, w = x.shape
            # every h x w window of each padded image, then each image's own: a view, then one gather
            windows = F.pad(x, (self.pad,) * 4).unfold(2, h, 1).unfold(3, w, 1)
            x = windows[torch.arange(n), :, shifts[:, 0], shifts[:, 1]]
        if self.flip:
            x = torch.where(flips[:, None, None, None], x.flip(-1), x)
        x = (x - self.mean) / self.std
        return list(zip(x.unbind(0), (self.targets[i] for i in indices)))

    def _draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image, its crop offsets then its flip coin, drawn in that order from the global RNG."""
        shifts, flips = [[0, 0]] * n, [False] * n
        for k in range(n if self.pad or self.flip else 0):
            if self.pad:
                shifts[k] = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            if self.flip:
                flips[k] = torch.rand(()).item() < 0.5
        return torch.tensor(shifts, dtype=torch.long).view(n, 2), torch.tensor(flips, dtype=torch.bool)


def _scaled_pad(pad: int, base: int, size: int) -> int:
    """``pad`` pixels at ``base`` px, scaled so the shift is the same fraction at ``size`` px."""
    return max(1, round(pad * size / base))


# Statistics of all 1797 images scaled to [0, 1] and upsampled to 32 px (upsampling smooths,
# so the std is lower than at 8 px).
@_register(DatasetInfo("digits", 10, 1, 32, (0.3053,), (0.3236,)))
def _digits(split: str, data_dir: str | None, download: bool, augment: bool,
            info: DatasetInfo) -> Dataset:
    from sklearn.datasets import load_digits  # why: scikit-learn (scipy) is slow to import; only the digits dataset needs it
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index_train, index_test = train_test_split(
        np.arange(len(digits.target)), test_size=0.2, stratify=digits.target, random_state=0)
    index = index_train if split == "train" else index_test
    x = torch.tensor(digits.images[index], dtype=torch.float32).unsqueeze(1) / 16
    # Upsampled once: the whole set is ~7 MB at 32 px, and per-item resizing would dominate.
    x = F.interpolate(x, size=info.img_size, mode="bilinear", align_corners=False)
    pad = _scaled_pad(2, 32, info.img_size) if augment else 0
    # No flip: digits are not mirror-symmetric.
    return TensorImageDataset(x, digits.target[index], info, pad=pad)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped (``.gz``) or plain.

    Args:
        path: file to read.

    Returns:
        The array with the file's dtype (native byte order) and shape.

    Raises:
        DataError: the file is missing, not IDX, or truncated / followed by extra bytes.
    """
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    path = os.fspath(path)
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip errors are OSError / EOFError
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes or raw[3] == 0:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'none'})")
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated inside its header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(dtypes[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "followed by extra bytes"
        raise DataError(f"IDX file {path} is {what}: {len(raw)} bytes, expected {expected} "
                        f"for shape {shape}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_dataset(split: str, data_dir: str | None, download: bool, augment: bool,
                 info: DatasetInfo, flip: bool, hint: str) -> Dataset:
    prefix = "train" if split == "train" else "t10k"
    names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    paths = [next((os.path.join(data_dir, n + ext) for ext in (".gz", "")
                   if os.path.isfile(os.path.join(data_dir, n + ext))), None) for n in names]
    if None in paths:
        missing = ", ".join(f"{n}[.gz]" for n, p in zip(names, paths) if p is None)
        where = data_dir if os.path.isdir(data_dir) else f"{data_dir} (no such directory)"
        note = " (--download is not supported: these files are read locally)" if download else ""
        raise DataError(f"{info.name}: missing {missing} in {where}; {hint}{note}")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if (images.dtype != np.uint8 or images.ndim != 3 or labels.ndim != 1
            or len(images) != len(labels)):
        raise DataError(f"{info.name}: {paths[0]} {images.shape} and {paths[1]} {labels.shape} "
                        "are not N x H x W uint8 images with N labels")
    if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise DataError(f"{info.name}: labels in {paths[1]} are outside 0..{info.num_classes - 1}")
    pad = _scaled_pad(2, 28, info.img_size) if augment else 0
    return TensorImageDataset(torch.from_numpy(images).unsqueeze(1), labels,
                              info, pad=pad, flip=flip and augment)


@_register(DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,)))
def _fashion_mnist(split: str, data_dir: str | None, download: bool, augment: bool,
                   info: DatasetInfo) -> Dataset:
    return _idx_dataset(split, data_dir or FASHION_MNIST_DIR, download, augment, info, flip=True,
                        hint="install them with `apt-get install dataset-fashion-mnist` "
                             "or pass --data-dir DIR holding them")


@_register(DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,)))
def _mnist(split: str, data_dir: str | None, download: bool, augment: bool,
           info: DatasetInfo) -> Dataset:
    hint = "pass --data-dir DIR holding the MNIST IDX files (train-*, t10k-*, plain or .gz)"
    if data_dir is None:
        raise DataError(f"mnist has no default location; {hint}")
    # MNIST digits are not mirror-symmetric; Fashion-MNIST clothes are.
    return _idx_dataset(split, data_dir, download, augment, info, flip=False, hint=hint)


def _cifar(split: str, data_dir: str | None, download: bool, augment: bool,
           info: DatasetInfo) -> Dataset:
    folder = "cifar-10-batches-py" if info.name == "cifar10" else "cifar-100-python"
    if data_dir is None:
        raise DataError(f"{info.name} needs --data-dir: the parent of the extracted {folder}/ "
                        "(add --download to fetch it there)")
    ops = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if augment else []
    if info.img_size != 32:
        ops.append(v2.Resize(info.img_size, antialias=True))
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)]
    cls = datasets.CIFAR10 if info.name == "cifar10" else datasets.CIFAR100
    try:
        return cls(data_dir, train=split == "train", download=download, transform=v2.Compose(ops))
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"{info.name}: {folder}/ not found or corrupted in {data_dir}; pass "
                        f"--download, or point --data-dir at the parent of the extracted "
                        f"{folder}/") from None
    except OSError as e:  # a failed download
        raise DataError(f"{info.name}: cannot download into {data_dir}: {e}") from None


_register(DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465),
                      (0.2470, 0.2435, 0.2616)))(_cifar)
_register(DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409),
                      (0.2673, 0.2564, 0.2762)))(_cifar)


@_register(DatasetInfo("imagefolder", 0, 3, 224, IMAGENET_MEAN, IMAGENET_STD))
def _imagefolder(split: str, data_dir: str | None, download: bool, augment: bool,
                 info: DatasetInfo) -> Dataset:
    sub = "train" if split == "train" else "val"
    classes = _folder_classes(data_dir, sub)
    if len(classes) != info.num_classes:
        raise DataError(f"imagefolder: {data_dir}/val has {len(classes)} classes but "
                        f"{data_dir}/train has {info.num_classes}")
    size = info.img_size
    if augment:
        ops = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    else:  # the usual 0.875 centre-crop ratio (256 -> 224)
        ops = [v2.Resize(int(size / 0.875), antialias=True), v2.CenterCrop(size)]
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)]
    try:
        return datasets.ImageFolder(os.path.join(data_dir, sub), transform=v2.Compose(ops))
    except FileNotFoundError as e:  # class folders without a single image
        raise DataError(f"imagefolder: {e}".replace("\n", " ")) from None
