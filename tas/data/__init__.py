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

The package's modules: :mod:`tas.data.registry` (names, :class:`DatasetInfo`, your own
``module:function``, :func:`create_dataset`), :mod:`tas.data.sources` (the built-in datasets,
registered on import) and :mod:`tas.data.loaders` (the search split and the loaders).
"""
from __future__ import annotations

# Import order matters: importing sources registers the built-in datasets.
from .registry import DatasetInfo, create_dataset, dataset_info, list_datasets
from .sources import FASHION_MNIST_DIR, TensorImageDataset, read_idx
from .loaders import create_loaders, split_train_val

__all__ = [
    "DatasetInfo", "TensorImageDataset", "create_dataset", "create_loaders", "dataset_info",
    "list_datasets", "read_idx", "split_train_val", "FASHION_MNIST_DIR",
]
