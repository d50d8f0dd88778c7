"""tas: prune convolutional networks by differentiable architecture search.

The pipeline, one module per step::

    data -> teacher (train) -> Supernet -> search -> Arch (JSON) -> materialize -> distil -> export
    tas.data   tas.training  tas.supernet tas.searching tas.arch  tas.materialize tas.training tas.export
"""
from . import models  # noqa: F401  (registers cifar_resnet* with timm)
from .arch import Arch
from .errors import TasError
from .flops import count_flops, count_params
from .materialize import build_slim, load_slim, materialize
from .models.factory import create_model
from .space import SearchSpace, load_space
from .supernet import Supernet, create_supernet

__version__ = "0.1.0"

__all__ = ["Arch", "SearchSpace", "Supernet", "TasError", "build_slim", "count_flops", "count_params",
           "create_model", "create_supernet", "export_onnx", "load_slim", "load_space", "materialize",
           "__version__"]


def __getattr__(name: str):
    # ONNX is imported only when exporting: it is slow to import and most runs never export.
    if name == "export_onnx":
        from .export import export_onnx

        return export_onnx
    raise AttributeError(f"module 'tas' has no attribute {name!r}")
