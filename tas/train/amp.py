"""How a training step runs on its device: mixed precision (``--amp``) and memory layout (``--channels-last``).

:class:`Precision` is the one place the training loops (teacher and distillation,
:func:`tas.engine.train_one_epoch`) and the search's weight and architecture steps ask how to run a
forward and a backward:

* ``bf16``: the forward under ``torch.autocast`` with bfloat16 (convs and matmuls in bf16, what
  autocast keeps in float32 stays so); the backward and the optimiser steps as in float32. Runs on
  CUDA and on CPUs (where PyTorch's CPU autocast supports it).
* ``fp16``: autocast with float16 and a ``GradScaler``: the loss is scaled before the backward, the
  gradients unscaled before each optimiser step, and a step whose gradients overflowed is skipped
  while the scale shrinks. The scale and its growth counter are part of a run's resumable state.
* ``channels_last``: models and image batches in NHWC, the layout CUDA's tensor-core kernels run
  fastest in; the values are the same.

Parameters and their optimiser states stay float32 in every mode.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn

from ..errors import TasError

__all__ = ["AMP_MODES", "Precision", "check_amp"]

#: ``--amp`` values and the autocast dtype of each
AMP_MODES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str | None) -> None:
    """Raise :class:`TasError` for an ``--amp`` value other than None, ``bf16`` or ``fp16``."""
    if amp is not None and amp not in AMP_MODES:
        raise TasError(f"--amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")


class Precision:
    """Autocast, loss scaling and memory format for the steps of one run on ``device``.

    With neither ``amp`` nor ``channels_last`` every method is what a plain float32 step does, so a
    loop calls them unconditionally.
    """

    def __init__(self, amp: str | None = None, device: torch.device | str = "cpu", channels_last: bool = False) -> None:
        check_amp(amp)
        self.amp = amp
        self.device_type = torch.device(device).type
        self.dtype = AMP_MODES.get(amp) if amp else None
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=amp == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context a forward (and its loss) runs in."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def model(self, module: nn.Module) -> nn.Module:
        """``module`` in this run's memory format (in place)."""
        if self.memory_format is torch.channels_last:
            module.to(memory_format=torch.channels_last)
        return module

    def images(self, x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        """An image batch on ``device`` in this run's memory format (asynchronous from pinned memory)."""
        non_blocking = torch.device(device).type == "cuda"
        if x.dim() == 4:
            return x.to(device, non_blocking=non_blocking, memory_format=self.memory_format)
        return x.to(device, non_blocking=non_blocking)

    def backward(self, loss: torch.Tensor, inputs: Iterable[torch.Tensor] | None = None) -> None:
        """``loss.backward`` (scaled under fp16), into ``inputs`` only when given."""
        self.scaler.scale(loss).backward(inputs=list(inputs) if inputs is not None else None)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; under fp16 on unscaled gradients, skipped if they overflowed."""
        self.scaler.step(optimizer)

    def update(self) -> None:
        """After the iteration's last :meth:`step`: adapt the fp16 loss scale (nothing otherwise)."""
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The fp16 loss scale and its growth counter (empty without fp16): a resumable state's part."""
        return dict(self.scaler.state_dict())

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Continue from :meth:`state_dict`'s scale (a state without one, e.g. saved before fp16 was
        on or by an older version, leaves the scale fresh)."""
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(dict(state))
