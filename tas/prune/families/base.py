"""The family registry: adapters register here, :func:`describe_model` dispatches to them.

An adapter is a function ``describe(model) -> ModelGraph`` registered for the model classes it
understands. :func:`describe_model` dispatches on the model and refuses anything else with the list
of supported families, so there is no silent partial support.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn
from timm.layers import EcaModule, SEModule

from ...errors import ModelError
from ..graph import ModelGraph
from ..slicing import SLICEABLE_CONVS

__all__ = ["register_family", "register_finalizer", "describe_model", "finalize_slim", "sync_feature_info",
           "sliceable_conv", "supported_families", "variant_check", "describe_attention"]

_FAMILIES: dict[str, tuple[Callable[[nn.Module], bool], Callable[[nn.Module], ModelGraph]]] = {}


def register_family(name: str, matches: Callable[[nn.Module], bool]):
    """Decorator registering ``describe`` for models where ``matches(model)`` is true."""
    def wrap(describe: Callable[[nn.Module], ModelGraph]):
        _FAMILIES[name] = (matches, describe)
        return describe
    return wrap


_FINALIZERS: dict[str, Callable[[nn.Module], nn.Module]] = {}


def register_finalizer(name: str):
    """Decorator registering ``fix(slim) -> slim`` run on every materialised model of a family
    (e.g. to update attributes like ``num_features`` that describe widths)."""
    def wrap(fix: Callable[[nn.Module], nn.Module]):
        _FINALIZERS[name] = fix
        return fix
    return wrap


def finalize_slim(family: str, slim: nn.Module) -> nn.Module:
    """Apply the family's finalizer to a materialised model (no-op when it has none)."""
    fix = _FINALIZERS.get(family)
    return fix(slim) if fix is not None else slim


def describe_attention(graph: ModelGraph, name: str, module: nn.Module | None, group: str,
                       block: tuple[str, int] | None) -> None:
    """Add a channel-attention module ``name`` on ``group`` (timm's ``SEModule`` or ``EcaModule``; none
    or ``nn.Identity`` adds nothing) to ``graph``, in ``block``; refuses any other kind."""
    if module is None or isinstance(module, nn.Identity):
        return
    if isinstance(module, SEModule):
        # The SE bottleneck width stays fixed; only its channel-facing sides follow the block.
        graph.add_layer(f"{name}.fc1", "conv", group, None, block)
        if isinstance(module.bn, nn.BatchNorm2d):
            graph.add_layer(f"{name}.bn", "bn", None, None, block)
        graph.add_layer(f"{name}.fc2", "conv", None, group, block)
    elif isinstance(module, EcaModule):
        graph.add_layer(f"{name}.conv", "channel_conv", group, group, block)
    else:
        raise ModelError(f"unsupported attention module {type(module).__name__} at {name} (SE and ECA are)")


def variant_check(family: str) -> Callable[[bool, str], None]:
    """The check an adapter runs on each structural assumption it makes: ``check(cond, what)``
    raises :class:`ModelError` ("unsupported <family> variant: <what>") unless ``cond`` holds."""
    def check(cond: bool, what: str) -> None:
        if not cond:
            raise ModelError(f"unsupported {family} variant: {what}")
    return check


def sliceable_conv(model: nn.Module, name: str, check: Callable[[bool, str], None], note: str = "") -> nn.Module:
    """``model``'s conv ``name``, refused through the family's ``check(cond, what)`` unless its class
    is exactly one of :data:`tas.prune.slicing.SLICEABLE_CONVS`. A subclass may transform its weight in
    forward (timm's ``StdConv2d`` standardises it over all input channels), which slicing would not
    reproduce, so ``isinstance`` is not enough."""
    m = model.get_submodule(name)
    check(type(m) in SLICEABLE_CONVS, f"{name} is a {type(m).__name__}, not one of the conv classes that slice "
          f"exactly ({', '.join(c.__name__ for c in SLICEABLE_CONVS)}{'; ' + note if note else ''})")
    return m


def sync_feature_info(model: nn.Module, width_of: Callable[[str], int]) -> nn.Module:
    """Set ``num_chs`` of each entry of timm's ``feature_info`` to ``width_of(entry's module)``.

    timm's feature wrappers (``FeatureListNet``, ``features_only``) and the necks built on a
    backbone read the widths there, not from the layers; a finalizer calls this with the family's
    rule for the output width of a feature module of the slim network.
    """
    for entry in getattr(model, "feature_info", None) or []:
        if isinstance(entry, dict) and "module" in entry:
            entry["num_chs"] = int(width_of(entry["module"]))
    return model


def supported_families() -> list[str]:
    return sorted(_FAMILIES)


def describe_model(model: nn.Module) -> ModelGraph:
    """The :class:`ModelGraph` of ``model``; :class:`ModelError` for an unsupported family."""
    for name, (matches, describe) in _FAMILIES.items():
        if matches(model):
            return describe(model)
    raise ModelError(
        f"unsupported model class {type(model).__name__}: supported families are "
        f"{', '.join(supported_families())}"
    )
