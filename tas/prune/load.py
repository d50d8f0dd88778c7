"""Read a network back from a run directory: a plain timm model or a pruned (slim) one.

:mod:`tas.io.rundir` reads and checks a run's files; this module turns them into a model, which
needs the model factory and, for a config with an ``"arch"`` key, the materialiser: the one place a
config's ``"arch"`` is dispatched.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch.nn as nn

from ..errors import ArchError, CheckpointError, ModelError
from ..io.checkpoint import load_weights
from ..io.rundir import WEIGHTS_NAME, read_config
from ..models.factory import create_model, load_state_dict_strict
from .materialize import build_slim

__all__ = ["build_model_from_config", "load_run", "load_slim", "load_original"]


def build_model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised model of the kind ``config`` (a run's ``config.json``) describes."""
    if "arch" in config:
        return build_slim(config["arch"])
    return create_model(config["model"], pretrained=False, **config["model_kwargs"])


def load_run(run_dir: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a run directory holds and load its weights strictly.

    Returns ``(model, config)`` with the model on the CPU in eval mode. A missing or malformed
    ``config.json`` or unreadable weights raise :class:`CheckpointError`; weights that do not fit
    the configured model raise :class:`ModelError`.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"run directory not found: {run_dir}")
    config = read_config(run_dir)
    model = build_model_from_config(config)
    weights = run_dir / WEIGHTS_NAME
    state_dict = load_weights(weights)
    name = config.get("model") if "arch" not in config else f"{config.get('model', 'slim')} (pruned arch)"
    load_state_dict_strict(model, state_dict, model_name=str(name), source=weights)
    return model.eval(), config


def load_slim(run_dir: str | Path) -> nn.Module:
    """Rebuild the trained slim network of a run directory (``config.json`` + ``model.safetensors``)."""
    model, config = load_run(run_dir)
    if "arch" not in config:
        raise ArchError(f"{run_dir} holds no architecture (config.json has no 'arch'): it is not a slim run")
    return model


def load_original(run_dir: str | os.PathLike, what: str) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_run` of a run that must hold an original (unpruned) network: the teacher a search
    prunes, a distillation learns from or an export compares with. ``what`` names it in the error
    (``"--teacher runs/t"``); a pruned run (``"arch"`` in its config) raises :class:`ModelError`."""
    model, config = load_run(run_dir)
    if "arch" in config:
        raise ModelError(f"{what} is a pruned network; give the original's run")
    return model, config
