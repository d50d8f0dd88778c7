"""Datasets and data loaders: the first step of the pipeline.

Every dataset is known by a name (:func:`list_datasets`) and built by :func:`create_dataset`;
each item is ``(image, label)`` with ``image`` a normalised float tensor ``C x H x W`` and
``label`` an ``int``, and each dataset exposes ``.targets`` (one int label per item).

=================  =======  =====  ====  ======================================================
name               classes  chans  size  source
=================  =======  =====  ====  ======================================================
``digits``         10       1      32    scikit-learn ``load_digits`` (bundled, 1797 images)
``fashion-mnist``  10       1      28    IDX files, default ``/usr/share/datasets/fashion-mnist``
``mnist``          10       1      28    IDX files in ``data_dir``
``cifar10``        10       3      32    torchvision ``CIFAR10`` in ``data_dir``
``cifar100``       100      3      32    torchvision ``CIFAR100`` in ``data_dir``
``imagefolder``    counted  3      224   ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*``
=================  =======  =====  ====  ======================================================

Nothing is downloaded unless ``download=True`` is passed, and only the CIFAR datasets can be.

Your own data: the name ``module:function`` (or ``path/to/file.py:function``) names a function of
no arguments that returns ``(train_dataset, test_dataset, DatasetInfo)``; it is called once per
process. Items are ``(image, label)`` as above, already at ``info.img_size``; a dataset without
``.targets`` has its labels read once, item by item.

:func:`create_loaders` wraps both splits in loaders; with ``search_split=True`` it also halves
the training set (:func:`split_train_val`) for the bi-level search, which learns weights on
one half and the architecture on the other.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset

from .errors import DataError
import importlib
import importlib.util
import sys
from torchvision import datasets
from torchvision.transforms import v2
from torchvision.datasets.folder import find_classes
from . import distributed as dist

__all__ = [
    "DatasetInfo", "TensorImageDataset", "create_dataset", "create_loaders", "dataset_info",
    "list_datasets", "read_idx", "split_train_val", "FASHION_MNIST_DIR",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    Attributes:
        name: registry name.
        num_classes: number of labels (``0 .. num_classes - 1``).
        in_chans: image channels (1 grayscale, 3 RGB).
        img_size: side of the square images the loaders yield.
        mean: per-channel mean subtracted during normalisation.
        std: per-channel standard deviation divided out during normalisation.
    """

    name: str
    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Builder signature: (split, data_dir, download, augment, info) -> Dataset.
_Builder = Callable[[str, "str | None", bool, bool, DatasetInfo], Dataset]
_DATASETS: dict[str, tuple[DatasetInfo, _Builder]] = {}


def _register(info: DatasetInfo) -> Callable[[_Builder], _Builder]:
    def wrap(fn: _Builder) -> _Builder:
        _DATASETS[info.name] = (info, fn)
        return fn
    return wrap


def list_datasets() -> list[str]:
    """Names accepted by :func:`create_dataset`, sorted."""
    return sorted(_DATASETS)


def _lookup(name: str) -> tuple[DatasetInfo, _Builder]:
    if ":" in name:
        return _custom(name)
    key = name.lower().replace("_", "-")
    if key not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from: {', '.join(list_datasets())}, "
                        "or give module:function naming your own")
    return _DATASETS[key]


# ---- your own data: --dataset module:function ------------------------------------------------------
_CUSTOM: dict[str, tuple[DatasetInfo, dict[str, Dataset]]] = {}


def _import_module(spec: str, module: str) -> Any:
    """``module`` by dotted name (found from the working directory too, as ``python -m`` would) or
    by the path of a ``.py`` file."""
    try:
        if module.endswith(".py"):
            if not os.path.isfile(module):
                raise DataError(f"--dataset {spec}: no such file {module}")
            loader_spec = importlib.util.spec_from_file_location(os.path.basename(module)[:-3], module)
            mod = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(mod)
            return mod
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.append(os.getcwd())
        return importlib.import_module(module)
    except ImportError as e:
        raise DataError(f"--dataset {spec}: cannot import {module} ({e})") from None


class _Labelled(Dataset):
    """A dataset without ``.targets`` given them (read once, item by item), for the class-balanced
    search split and ``--limit``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.targets = [int(dataset[i][1]) for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]


def _custom(spec: str) -> tuple[DatasetInfo, _Builder]:
    """The datasets ``module:function`` returns, called once per process: ``(train, test, DatasetInfo)``."""
    if spec not in _CUSTOM:
        module, _, attr = spec.rpartition(":")
        if not module or not attr.isidentifier():
            raise DataError(f"--dataset {spec!r}: expected module:function (e.g. mydata:load or "
                            "path/to/mydata.py:load)")
        fn = getattr(_import_module(spec, module), attr, None)
        if not callable(fn):
            raise DataError(f"--dataset {spec}: {module} has no function {attr}")
        out = fn()
        if (not isinstance(out, (tuple, list)) or len(out) != 3 or not isinstance(out[2], DatasetInfo)
                or not all(hasattr(d, "__getitem__") and hasattr(d, "__len__") for d in out[:2])):
            raise DataError(f"--dataset {spec}: {attr}() must return (train_dataset, test_dataset, "
                            f"tas.data.DatasetInfo), got {type(out).__name__}"
                            f"{' of ' + ', '.join(type(o).__name__ for o in out) if isinstance(out, (tuple, list)) else ''}")
        train, test, info = out
        splits = {k: d if hasattr(d, "targets") else _Labelled(d) for k, d in (("train", train), ("test", test))}
        _CUSTOM[spec] = (replace(info, name=spec), splits)
    info, splits = _CUSTOM[spec]
    return info, lambda split, data_dir, download, augment, info: splits[split]


def dataset_info(name: str, data_dir: str | None = None,
                 img_size: int | None = None) -> DatasetInfo:
    """Classes, channels, image size and normalisation of dataset ``name``.

    Args:
        name: a name from :func:`list_datasets`.
        data_dir: dataset root; only ``imagefolder`` needs it here (to count its classes).
        img_size: override the dataset's default image size.
    """
    info, _ = _lookup(name)
    if img_size is not None:
        if not isinstance(img_size, int) or img_size < 1:
            raise DataError(f"img_size must be a positive integer, got {img_size!r}")
        if ":" in name and img_size != info.img_size:  # a function's datasets are what they are
            raise DataError(f"--dataset {name} yields {info.img_size} px images, not {img_size}; resize them "
                            "in your datasets")
        info = replace(info, img_size=img_size)
    if info.name == "imagefolder":
        info = replace(info, num_classes=len(_folder_classes(data_dir, "train")))
    return info


def create_dataset(
        name: str,
        split: str,
        data_dir: str | None = None,
        download: bool = False,
        img_size: int | None = None,
        augment: bool | None = None,
) -> Dataset:
    """Build one split of a dataset.

    Args:
        name: a name from :func:`list_datasets`.
        split: ``"train"`` (the whole training set) or ``"test"``.
        data_dir: where the files are; required for ``mnist``, ``cifar*`` and ``imagefolder``.
        download: let torchvision download CIFAR into ``data_dir``; other datasets are only
            read from local files.
        img_size: square side of the returned images (default: the dataset's own).
        augment: random training augmentation; defaults to ``True`` for ``"train"``. The test
            split is never augmented, whatever is passed.

    Returns:
        A dataset of ``(float tensor C x H x W, int label)`` with a ``.targets`` sequence.

    Raises:
        DataError: unknown name or split, or files missing or unreadable.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
    info = dataset_info(name, data_dir, img_size)
    augment = split == "train" and (augment is None or bool(augment))
    return _lookup(name)[1](split, data_dir, download, augment, info)


class TensorImageDataset(Dataset):
    """Images held in memory as one tensor, augmented per item with tensor ops.

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
        x = self.images[index]
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if x.shape[-1] != self.img_size:
            # Resized per item: 60k MNIST images stored at e.g. 224 px would take gigabytes.
            x = F.interpolate(x[None], size=self.img_size, mode="bilinear", align_corners=False)[0]
        if self.pad:
            h, w = x.shape[-2:]
            i, j = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            x = F.pad(x, (self.pad,) * 4)[:, i:i + h, j:j + w]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return (x - self.mean) / self.std, self.targets[index]


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


def _folder_classes(data_dir: str | None, sub: str) -> list[str]:
    if data_dir is None:
        raise DataError("imagefolder needs --data-dir DIR holding DIR/train/<class>/ "
                        "and DIR/val/<class>/")
    root = os.path.join(data_dir, sub)
    try:
        return find_classes(root)[0]
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"imagefolder: expected class folders in {root}/ "
                        "(layout DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg)") from None


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


def split_train_val(targets: Sequence[int], seed: int = 0) -> tuple[list[int], list[int]]:
    """Halve a training set per class, for the bi-level search.

    Each class's indices are shuffled by a generator seeded with ``(seed, class)`` and split in
    two; an odd leftover goes to the first half. The halves are disjoint, cover every index,
    are class-balanced (per-class counts differ by at most one) and depend only on ``targets``
    and ``seed``.

    Args:
        targets: one integer label per training item.
        seed: selects the split.

    Returns:
        ``(train_indices, val_indices)``, each sorted.
    """
    targets = np.asarray(targets)
    train, val = [], []
    for c in np.unique(targets):
        index = np.flatnonzero(targets == c)
        # Seeded per class so a class's split does not depend on which other classes exist.
        np.random.default_rng([seed, int(c)]).shuffle(index)
        half = (len(index) + 1) // 2
        train += index[:half].tolist()
        val += index[half:].tolist()
    return sorted(train), sorted(val)


def _balanced_head(indices: Sequence[int], targets: Sequence[int], limit: int | None) -> list[int]:
    """The first ``limit`` of ``indices`` taken round-robin over classes (all if no limit)."""
    indices = list(indices)
    if limit is None or limit >= len(indices):
        return indices
    by_class: dict[int, list[int]] = {}
    for i in indices:
        by_class.setdefault(int(targets[i]), []).append(i)
    order = sorted(by_class.values(), key=lambda ix: ix[0])
    picked = [ix[k] for k in range(max(map(len, order))) for ix in order if k < len(ix)]
    return sorted(picked[:limit])


class _Subset(Subset):
    """A :class:`~torch.utils.data.Subset` that keeps ``.targets`` (for splits and samplers)."""

    @property
    def targets(self) -> list[int]:
        return [int(self.dataset.targets[i]) for i in self.indices]


def create_loaders(
        name: str,
        data_dir: str | None = None,
        batch_size: int = 64,
        workers: int = 0,
        seed: int = 0,
        download: bool = False,
        img_size: int | None = None,
        search_split: bool = False,
        limit: int | None = None,
        distributed: bool = False,
        augment: bool = True,
        pin_memory: bool = False,
) -> dict[str, DataLoader]:
    """Training and test loaders for dataset ``name``.

    Args:
        name, data_dir, download, img_size: as in :func:`create_dataset`.
        batch_size: samples per batch (the last batch may be smaller).
        workers: loader worker processes (0: load in the main process).
        seed: seeds the train/val split and the shuffling order, so a resumed run replays the
            same order.
        search_split: also halve the training set (:func:`split_train_val`) into ``"train"``
            (for the weights) and ``"val"`` (for the architecture). Both halves are training
            data and so both are augmented.
        limit: at most this many samples per split, chosen class-balanced and deterministically
            (for smoke tests).
        distributed: in a distributed run (:mod:`tas.distributed`), give this rank its share of
            every batch: ``batch_size`` stays the global batch, all ranks walk the same seeded
            order and each takes the samples ``rank::world_size`` of each batch (the test loader
            too; :func:`tas.train.engine.evaluate` totals over ranks). Ignored in a single process.
            Augmentation draws from each process's own RNG, so only without it does a
            distributed run see exactly the images a single process would.
        augment: random training augmentation (the dataset's default crop/flip); ``False`` for none.
        pin_memory: batches in page-locked memory, so that copies to a CUDA device can overlap the
            step (pass ``device.type == "cuda"``; on a CPU run it would only cost memory).

    Returns:
        ``{"train", "test"}`` loaders, plus ``"val"`` with ``search_split``. Each loader's
        ``.dataset`` is a ``Subset`` whose ``.indices`` index the full split.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive integer, got {limit}")

    if download and distributed and dist.rank() != 0:
        dist.barrier()  # rank 0 downloads first; the others then find the files
    train_set = create_dataset(name, "train", data_dir, download, img_size, augment=augment)
    test_set = create_dataset(name, "test", data_dir, download, img_size)
    if download and distributed and dist.rank() == 0:
        dist.barrier()
    halves = (dict(zip(("train", "val"), split_train_val(train_set.targets, seed)))
              if search_split else {"train": range(len(train_set))})
    rank, world = (dist.rank(), dist.world_size()) if distributed else (0, 1)
    common = dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=pin_memory)

    def batches(sampler: Any, drop_small: bool) -> Any:
        per_batch = BatchSampler(sampler, batch_size, drop_last=False)
        return per_batch if world == 1 else dist.ShardedBatchSampler(per_batch, rank, world, drop_small)

    loaders = {}
    for offset, (key, index) in enumerate(halves.items()):
        subset = _Subset(train_set, _balanced_head(index, train_set.targets, limit))
        # Its own generator makes the order (and the worker seeds) a function of `seed` alone,
        # the same on every rank; the val half gets a different stream than the train half.
        gen = torch.Generator().manual_seed(seed + offset)
        loaders[key] = DataLoader(subset, batch_sampler=batches(RandomSampler(subset, generator=gen), True),
                                  generator=gen, **common)
    test = _Subset(test_set, _balanced_head(range(len(test_set)), test_set.targets, limit))
    loaders["test"] = DataLoader(test, batch_sampler=batches(SequentialSampler(test), False), **common)
    return loaders
