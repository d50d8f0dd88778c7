"""The dataset registry: names to :class:`DatasetInfo` and builders, and :func:`create_dataset`.

Built-in datasets register themselves with :func:`_register` (:mod:`tas.data.sources`); a name
``module:function`` instead names the user's own function, imported and called once per process
(:func:`_custom`).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable

from torch.utils.data import Dataset
from torchvision.datasets.folder import find_classes

from ..errors import DataError

__all__ = ["DatasetInfo", "create_dataset", "dataset_info", "list_datasets"]

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


# Here rather than beside the imagefolder builder: dataset_info counts imagefolder's classes with it.
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
