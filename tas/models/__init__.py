"""Models registered with timm by tas (``timm.create_model`` finds them after ``import tas``)."""
from .cifar_resnet import CifarResNet

__all__ = ["CifarResNet"]
