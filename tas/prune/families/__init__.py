"""Family adapters: the only code that knows a backbone family's block structure.

An adapter is a function ``describe(model) -> ModelGraph`` registered for the model classes it
understands (:mod:`~tas.prune.families.base` holds the registry). :func:`describe_model` dispatches
on the model and refuses anything else with the list of supported families, so there is no silent
partial support. A new family is one module here, imported below so that it registers itself.
"""
from . import efficientnet, resnet  # noqa: F401  (register themselves)
from .base import (describe_model, finalize_slim, register_family, register_finalizer, sliceable_conv,
                   supported_families, sync_feature_info, variant_check)

__all__ = ["register_family", "register_finalizer", "describe_model", "finalize_slim", "sync_feature_info",
           "sliceable_conv", "supported_families", "variant_check"]
