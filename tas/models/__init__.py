"""Models registered with timm by tas (``timm.create_model`` finds them after ``import tas``)."""
from .cifar_mobilenet import cifar_mobilenetv2, cifar_mobilenetv2_050
from .cifar_resnet import CifarResNet
from .factory import create_model

__all__ = ["CifarResNet", "cifar_mobilenetv2", "cifar_mobilenetv2_050", "create_model"]
