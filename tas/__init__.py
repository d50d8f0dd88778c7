"""tas: prune convolutional networks by differentiable architecture search.

The pipeline, one module per step::

    data -> teacher (timm model) -> Supernet -> search -> Arch (JSON) -> materialize -> distil -> export
"""
from . import models  # noqa: F401  (registers cifar_resnet* with timm)
from .errors import TasError
from .flops import count_flops, count_params

__version__ = "0.1.0"

__all__ = ["TasError", "count_flops", "count_params", "__version__"]
