"""The run directory: what every stage writes and how any later stage reads a model back.

A finished run holds (see :mod:`tas.checkpoint` for the full layout)::

    config.json        {"version": 1, "model": <timm name>, "model_kwargs": {...},
                        "input_size": [C, H, W], ...stage-specific keys}
    model.safetensors  the weights, loadable strictly into the model config.json describes
    metrics.json       final metrics (optional)

:func:`save_run` writes those files (each atomically) and :func:`load_run` rebuilds the model from
``config.json`` alone -- no pickle, no code on disk. A config with an ``"arch"`` key describes a
pruned (slim) network and is built by :func:`tas.materialize.build_slim` instead of timm.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch.nn as nn

from .checkpoint import atomic_write_json, load_weights, read_json, save_weights
from .errors import CheckpointError, ModelError

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "METRICS_NAME", "RUN_VERSION", "save_run", "load_run",
           "read_config", "build_model_from_config", "is_finished_run"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
METRICS_NAME = "metrics.json"
RUN_VERSION = 1


def is_finished_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a finished run's weights (what ``--overwrite`` protects)."""
    return (Path(run_dir) / WEIGHTS_NAME).is_file()


def save_run(
    run_dir: str | os.PathLike,
    model: nn.Module,
    *,
    model_name: str,
    model_kwargs: Mapping[str, Any],
    input_size: Sequence[int],
    metrics: Mapping[str, Any] | None = None,
    extra_config: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``model.safetensors``, ``config.json`` and (if given) ``metrics.json`` into ``run_dir``.

    Each file is written atomically; the weights go first so ``config.json`` never describes
    weights that are not there yet. Returns the paths written, by kind.

    Args:
        model_name: timm name the model is rebuilt from (ignored by :func:`load_run` when
            ``extra_config`` carries an ``"arch"``).
        model_kwargs: constructor arguments, ``num_classes`` and ``in_chans`` included.
        input_size: ``(C, H, W)`` of one input.
        extra_config: more keys for ``config.json`` (dataset, mean/std, training settings, arch).
    """
    run_dir = Path(run_dir)
    kwargs = dict(model_kwargs)
    for key in ("num_classes", "in_chans"):
        if key not in kwargs:
            raise ValueError(f"save_run: model_kwargs must include {key!r}")
    config: dict[str, Any] = {
        "version": RUN_VERSION,
        "model": model_name,
        "model_kwargs": kwargs,
        "input_size": [int(x) for x in input_size],
    }
    for key, value in (extra_config or {}).items():
        if key in config:
            raise ValueError(f"save_run: extra_config may not override {key!r}")
        config[key] = value
    paths = {"weights": run_dir / WEIGHTS_NAME, "config": run_dir / CONFIG_NAME}
    save_weights(paths["weights"], model.state_dict(), metadata={"format": "pt", "model": str(model_name)})
    atomic_write_json(paths["config"], config)
    if metrics is not None:
        paths["metrics"] = run_dir / METRICS_NAME
        atomic_write_json(paths["metrics"], dict(metrics))
    return paths


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a run, checked; anything missing or malformed raises :class:`CheckpointError`."""
    path = Path(run_dir) / CONFIG_NAME
    if Path(run_dir).is_file():
        raise CheckpointError(f"expected a run directory, got a file: {run_dir}")
    config = read_json(path, "run config")
    version = config.get("version")
    if version != RUN_VERSION:
        raise CheckpointError(f"run config {path} has version {version!r}; this tas reads version {RUN_VERSION}")
    problems = []
    if "arch" not in config and not (isinstance(config.get("model"), str) and config["model"]):
        problems.append("'model' must be a timm model name")
    kwargs = config.get("model_kwargs")
    if not isinstance(kwargs, dict) or not all(isinstance(kwargs.get(k), int) for k in ("num_classes", "in_chans")):
        problems.append("'model_kwargs' must be an object with integer num_classes and in_chans")
    size = config.get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(x, int) and x > 0 for x in size)):
        problems.append("'input_size' must be [C, H, W]")
    if problems:
        raise CheckpointError(f"run config {path} is malformed: {'; '.join(problems)}")
    return config


def build_model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised model of the kind ``config`` (a run's ``config.json``) describes."""
    # ---- slim (pruned) models: the one place a config's "arch" is dispatched --------------------
    if "arch" in config:
        try:
            from .materialize import build_slim  # lazy: only runs that were pruned need it
        except ModuleNotFoundError as e:
            if e.name != "tas.materialize":
                raise
            raise ModelError("this run holds a pruned architecture ('arch' in config.json) but this "
                             "tas has no tas.materialize to build it") from None
        return build_slim(config["arch"])
    # ---- plain timm models ----------------------------------------------------------------------
    from .models.factory import create_model

    return create_model(config["model"], pretrained=False, **config["model_kwargs"])


def load_run(run_dir: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a run directory holds and load its weights strictly.

    Returns ``(model, config)`` with the model on the CPU in eval mode. A missing or malformed
    ``config.json`` or unreadable weights raise :class:`CheckpointError`; weights that do not fit
    the configured model raise :class:`ModelError`.
    """
    from .models.factory import load_state_dict_strict

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
