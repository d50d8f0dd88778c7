"""Models registered with timm by tas (``timm.create_model`` finds them after ``import tas``)."""
from .cifar_resnet import CifarResNet
from .factory import create_model

__all__ = ["CifarResNet", "create_model"]
