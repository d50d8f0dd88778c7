"""Channel-wise interpolation (CWI): resize a feature map along the channel axis only.

Output channel ``t`` of ``C_out`` averages input channels ``[floor(t·C/C_out), ceil((t+1)·C/C_out))``,
which is ``adaptive_avg_pool3d(x, (C_out, H, W))`` on a (B, C, H, W) tensor. Widening (``C < C_out``,
what a TAS fragment needs) averages one or two neighbours per output channel, computed as two
``index_select``\ s and an add; narrowing uses a cached averaging matrix. Both give the pooling's
numbers and are several times faster than 3-d pooling on CPU; the gather saves einsum's permute
copies (5-9 % of a search weight step, ``docs/benchmarks_search_overhead.md``). No parameters.
"""
from __future__ import annotations

from functools import lru_cache

import torch

__all__ = ["interp_matrix", "channel_interp"]


@lru_cache(maxsize=512)
def _interp_matrix_cpu(c_in: int, c_out: int) -> torch.Tensor:
    m = torch.zeros(c_out, c_in)
    for t in range(c_out):
        lo = (t * c_in) // c_out
        hi = -((-(t + 1) * c_in) // c_out)  # ceil
        m[t, lo:hi] = 1.0 / (hi - lo)
    return m


_NEIGHBOURS: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


@lru_cache(maxsize=512)
def _neighbours_cpu(c_in: int, c_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last input channel of each output channel's window (equal for a window of one)."""
    lo = [(t * c_in) // c_out for t in range(c_out)]
    last = [-((-(t + 1) * c_in) // c_out) - 1 for t in range(c_out)]
    return torch.tensor(lo), torch.tensor(last)


def _neighbours(c_in: int, c_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = (c_in, c_out, device)
    if key not in _NEIGHBOURS:
        _NEIGHBOURS[key] = tuple(t.to(device) for t in _neighbours_cpu(c_in, c_out))
    return _NEIGHBOURS[key]


def interp_matrix(c_in: int, c_out: int, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``(c_out, c_in)`` averaging matrix of CWI."""
    return _interp_matrix_cpu(c_in, c_out).to(device=device, dtype=dtype)


def channel_interp(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Interpolate ``x`` (B, C, H, W) to ``channels`` channels; identity when C == channels."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] < channels:  # windows of one or two channels
        lo, last = _neighbours(x.shape[1], channels, x.device)
        return (x.index_select(1, lo) + x.index_select(1, last)) * 0.5
    m = interp_matrix(x.shape[1], channels, x.device, x.dtype)
    return torch.einsum("oc,bchw->bohw", m, x)
