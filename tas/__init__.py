"""tas: prune convolutional networks by differentiable architecture search.

On your own model and DataLoaders (:mod:`tas.api`)::

    result = tas.search(model, train_loader, val_loader, flops_ratio=0.5, epochs=2)
    tas.distill(result.slim, model, train_loader, val_loader, epochs=3)
    tas.export_onnx(result.slim, "slim.onnx")

The pipeline, one stage subpackage per step (docs/architecture.md draws the layers)::

    data -> teacher -> Supernet -> search -> Arch (JSON) -> materialise -> distil -> export
    tas.data   tas.train    tas.nas   tas.nas     tas.prune     tas.prune     tas.train  tas.deploy
               (loop, run)  (supernet)(searcher)  (arch)        (materialize) (distill)  (export, latency)

Imports go one way: errors/cli/distributed/metrics/tb < io < models, data < prune < train, deploy
< nas < baselines < api, pipeline, commands.
"""
# The version's one home: pyproject.toml reads it from here.
__version__ = "0.1.0"

from . import models  # noqa: F401,E402  (registers cifar_resnet* with timm)
from .api import SearchResult, distill, search  # noqa: E402
from .prune.arch import Arch  # noqa: E402
from .errors import TasError  # noqa: E402
from .prune.flops import count_flops, count_params  # noqa: E402
from .prune.load import load_slim  # noqa: E402
from .prune.materialize import build_slim, materialize  # noqa: E402
from .models.factory import create_model  # noqa: E402
from .prune.reconstruct import reconstruct  # noqa: E402
from .nas.space import SearchSpace, load_space  # noqa: E402
from .nas.supernet import Supernet, create_supernet  # noqa: E402
from .deploy.export import export_onnx  # noqa: E402

__all__ = ["Arch", "SearchResult", "SearchSpace", "Supernet", "TasError", "build_slim", "count_flops",
           "count_params", "create_model", "create_supernet", "distill", "export_onnx", "load_slim", "load_space",
           "materialize", "reconstruct", "search", "__version__"]

