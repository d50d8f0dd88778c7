"""Build any timm model by name, with one-line errors and local pretrained weights.

:func:`create_model` is the only place tas turns a model name into a network: train.py builds the
teacher with it and :func:`tas.prune.load.load_run` rebuilds saved runs with it. Nothing here goes to
the network unless ``pretrained=True`` is asked for explicitly; ``pretrained_path`` loads a local
``.safetensors`` file (or a torch file, read with ``weights_only=True``) instead.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
import torch.nn as nn

from ..io.checkpoint import load_weights
from ..errors import CheckpointError, ModelError
from . import cifar_mobilenet, cifar_resnet  # noqa: F401  (register cifar_resnet*, cifar_mobilenetv2* with timm)
from timm.models._manipulate import adapt_input_conv

__all__ = ["check_model_name", "create_model", "load_pretrained", "load_state_dict_strict", "read_state_dict", "suggest_models"]

_LIST_HINT = "list models with: python -c \"import tas, timm; print(timm.list_models('*resnet*'))\""


def suggest_models(name: str, n: int = 3) -> list[str]:
    """Registered timm model names closest to ``name`` (difflib), best first."""
    return difflib.get_close_matches(name, timm.list_models(), n=n, cutoff=0.5)


def check_model_name(name: str) -> None:
    """Raise :class:`ModelError` with the closest registered names unless timm knows ``name``."""
    if not isinstance(name, str) or not name:
        raise ModelError(f"model name must be a non-empty string, got {name!r}")
    if timm.is_model(name):
        return
    close = suggest_models(name)
    did_you_mean = f"; did you mean {', '.join(close)}?" if close else ""
    raise ModelError(f"unknown model {name!r}{did_you_mean} ({_LIST_HINT})")


def create_model(
    name: str,
    num_classes: int,
    in_chans: int,
    pretrained: bool = False,
    pretrained_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A timm model (tas's ``cifar_resnet*`` and ``cifar_mobilenetv2*`` included) with ``num_classes`` outputs and ``in_chans`` inputs.

    Args:
        name: a timm model name (``timm.list_models()``); unknown names raise :class:`ModelError`
            with the closest registered names.
        num_classes: classifier outputs.
        in_chans: input image channels.
        pretrained: download timm's published weights (network access; only when asked for).
        pretrained_path: local weights to start from, ``.safetensors`` or a torch file. A classifier
            of another size is dropped (left freshly initialised) and a first convolution for
            another number of input channels is adapted, as timm does; any other mismatch raises
            :class:`ModelError`. Unreadable files raise :class:`~tas.errors.CheckpointError`.
        **kwargs: passed on to the model constructor (``drop_rate=...``).
    """
    check_model_name(name)
    if pretrained and pretrained_path:
        raise ModelError("give either --pretrained (timm weights, downloaded) or --pretrained-path (a local file), not both")
    try:
        model = timm.create_model(name, pretrained=bool(pretrained), num_classes=num_classes,
                                  in_chans=in_chans, **kwargs)
    except TypeError as e:
        raise ModelError(f"cannot build model {name!r} with arguments {sorted(kwargs)}: {e}") from None
    except Exception as e:  # noqa: BLE001  (download / hub failures: only reachable with pretrained=True)
        if not pretrained:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"cannot load pretrained weights for {name!r}: {msg} "
                         "(offline? pass a local file with --pretrained-path)") from None
    if pretrained_path:
        load_pretrained(model, pretrained_path, model_name=name)
    return model


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a torch file loaded with ``weights_only=True``.

    Torch files holding ``{"state_dict": ...}`` or ``{"model": ...}`` are unwrapped and a DDP
    ``module.`` prefix is stripped. Missing or unreadable files raise :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    if path.suffix == ".safetensors":
        return load_weights(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle errors, zip errors, unsafe content: all "unreadable")
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not a readable weights file (truncated, corrupt or not a "
                              f"state dict?): {msg}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _fmt_keys(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _mismatch(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
              for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    return missing, unexpected, shapes


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                           model_name: str, source: str | os.PathLike) -> None:
    """Load ``state_dict`` into ``model``; any missing/unexpected key or shape raises :class:`ModelError`."""
    missing, unexpected, shapes = _mismatch(model, state_dict)
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shape mismatch {_fmt_keys(shapes, 2)}")
        if missing:
            parts.append(f"missing {_fmt_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected {_fmt_keys(unexpected)}")
        raise ModelError(f"the weights in {source} do not fit model {model_name}: {'; '.join(parts)}")
    model.load_state_dict(state_dict, strict=True)


def _prefixes(model: nn.Module, cfg_key: str) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get(cfg_key) or []
    return [names] if isinstance(names, str) else list(names)


def load_pretrained(model: nn.Module, path: str | os.PathLike, *, model_name: str) -> nn.Module:
    """Start ``model`` from local weights, dropping a classifier of another size as timm does."""
    sd = read_state_dict(path)
    own = model.state_dict()
    # First convolution for another number of input channels: sum / repeat like timm.
    for conv in _prefixes(model, "first_conv"):
        key = f"{conv}.weight"
        if key in sd and key in own and sd[key].ndim == 4 and sd[key].shape[1] != own[key].shape[1] \
                and sd[key].shape[0] == own[key].shape[0]:
            sd[key] = adapt_input_conv(own[key].shape[1], sd[key], base_chans=sd[key].shape[1])
    # Classifier of another size: keep the fresh one.
    for head in _prefixes(model, "classifier"):
        keys = [k for k in sd if k == head or k.startswith(head + ".")]
        if any(k in own and sd[k].shape != own[k].shape for k in keys):
            for k in keys:
                sd.pop(k)
                if k in own:
                    sd[k] = own[k]
    load_state_dict_strict(model, sd, model_name=model_name, source=path)
    return model
