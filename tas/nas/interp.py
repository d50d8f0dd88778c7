"""Channel-wise interpolation (CWI): resize a feature map along the channel axis only.

Output channel ``t`` of ``C_out`` averages input channels ``[floor(t·C/C_out), ceil((t+1)·C/C_out))``,
which is ``adaptive_avg_pool3d(x, (C_out, H, W))`` on a (B, C, H, W) tensor. It is computed here as a
matrix product with a cached averaging matrix, which gives the same numbers and is several times
faster than 3-d pooling on CPU. No parameters.
"""
from __future__ import annotations

from functools import lru_cache

import torch

__all__ = ["interp_matrix", "channel_interp"]


@lru_cache(maxsize=1024)
def _interp_matrix(c_in: int, c_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Cached per device: on a GPU, copying a host matrix over at every call would make each call a
    # synchronisation point. Built with a few tensor ops (a Python loop over rows was most of a
    # cold search step's operators), in float64 and rounded once to float32, exactly as before.
    # Never an inference tensor: one first built under torch.inference_mode() would be cached and
    # break every later training step that saves it for backward.
    with torch.inference_mode(False), torch.no_grad():
        t = torch.arange(c_out)
        lo = (t * c_in) // c_out
        hi = -((-(t + 1) * c_in) // c_out)  # ceil
        cols = torch.arange(c_in)
        inside = (cols >= lo[:, None]) & (cols < hi[:, None])
        m = inside / (hi - lo)[:, None].double()
        return m.float().to(device=device, dtype=dtype)


def interp_matrix(c_in: int, c_out: int, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``(c_out, c_in)`` averaging matrix of CWI (cached: do not modify it in place)."""
    return _interp_matrix(int(c_in), int(c_out), torch.device(device), dtype)


def channel_interp(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Interpolate ``x`` (B, C, H, W) to ``channels`` channels; identity when C == channels."""
    if x.shape[1] == channels:
        return x
    m = interp_matrix(x.shape[1], channels, x.device, x.dtype)
    return torch.einsum("oc,bchw->bohw", m, x)
