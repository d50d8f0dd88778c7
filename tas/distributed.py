"""Data-parallel runs under ``torchrun``: process group, sharded batches, gradient and BN sync.

Every collective here is a no-op in a single process, so the training and search loops call them
unconditionally and one code path serves both.

The scale-out contract (see ``docs/architecture.md``):

* ``--batch-size`` is the **global** batch. Every rank walks the same seeded global batch order
  and takes the samples ``rank::world_size`` of each batch (:class:`ShardedBatchSampler`), so a
  run's batches do not depend on how many processes share them.
* Gradients are averaged over all samples of the global batch (:func:`reduce_gradients`), the
  search's Gumbel draws come from a generator seeded alike on every rank, and in the supernet every
  training-mode BatchNorm normalises with the global batch's statistics
  (:func:`sync_batch_norm`). A distributed search therefore takes the same steps as a
  single-process search with the same global batch, up to float summation order.
* Only rank 0 writes files, TensorBoard events and stdout (:func:`is_main`, :func:`session`).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import Sampler

from .errors import TasError
from torch.nn.parallel import DistributedDataParallel
import json

__all__ = ["session", "resolve_device", "rank_device", "data_parallel", "is_active", "rank", "world_size", "is_main", "barrier", "all_reduce_sum",
           "loss_scale", "reduce_gradients", "broadcast_", "broadcast_object", "max_divergence", "all_reduce_max", "sync_batch_norm", "ShardedBatchSampler"]


def is_active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one process that writes files and logs."""
    return rank() == 0


def _launched_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise TasError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is a :class:`TasError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TasError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return torch.device(name)


@contextlib.contextmanager
def session(device: str = "auto", timeout_s: float = 1800.0) -> Iterator[torch.device]:
    """Join the process group ``torchrun`` describes (if any) and yield this rank's device.

    Without ``torchrun`` (``WORLD_SIZE`` unset or 1) this only resolves ``device``. Under it, the
    backend is NCCL when the device is CUDA and gloo on CPU; each rank takes ``cuda:LOCAL_RANK``;
    stdout of ranks other than 0 is silenced so summaries print once. A process group that was
    already initialised by the caller is used as it is and left open.
    """
    world = _launched_world_size()
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        yield rank_device(resolve_device(device))
        return
    if not dist.is_available():
        raise TasError("this torch build has no torch.distributed; run without torchrun")
    dev = resolve_device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TasError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                           "lower --nproc_per_node")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    kwargs = {"device_id": dev} if dev.type == "cuda" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    stdout = sys.stdout
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")
    try:
        yield dev
    finally:
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout
        dist.destroy_process_group()


def rank_device(dev: torch.device) -> torch.device:
    """``dev``, with a bare ``cuda`` made this rank's ``cuda:LOCAL_RANK`` in a distributed run."""
    if dev.type == "cuda" and dev.index is None and is_active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` when distributed.

    DDP broadcasts rank 0's parameters and buffers at construction and averages gradients over
    the ranks during ``backward``. In one process ``model`` itself is returned.
    """
    if not is_active():
        return model

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def barrier() -> None:
    if is_active():
        dist.barrier()


def all_reduce_sum(values: Sequence[float], device: torch.device | str | None = None) -> list[float]:
    """Element-wise sums of ``values`` over all ranks (float64; the values themselves alone)."""
    if not is_active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device(device))
    dist.all_reduce(t)
    return t.tolist()


def _comm_device(device: torch.device | str | None = None) -> torch.device:
    """Where a collective's tensor must live: NCCL moves CUDA tensors only (``device``, else the
    current CUDA device), gloo CPU ones."""
    if dist.get_backend() != "nccl":
        return torch.device("cpu")
    return torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())


def loss_scale(count: int) -> float:
    """What to multiply a rank's *mean* loss over its ``count`` samples by before ``backward``.

    Distributed, the loss sum (``count``): with synchronised BatchNorm every rank's loss depends on
    every rank's samples, and only gradients of sums add up to the global batch's gradient when the
    shards differ in size. In one process 1, so the usual mean-loss gradient is left untouched.
    """
    return float(count) if is_active() else 1.0


def reduce_gradients(params: Iterable[torch.nn.Parameter], count: int,
                     extras: Sequence[float] = ()) -> tuple[int, list[float]]:
    """Turn each rank's gradients into the gradient of the global batch's mean loss.

    Each rank back-propagated its mean loss times :func:`loss_scale` (the sum over its ``count``
    samples); the global mean's gradient is ``Σ_r grad_r / Σ_r count_r``. One all-reduce carries
    the gradients, the counts and ``extras`` (per-rank sums to total, such as the loss sum), so a
    non-finite loss on any rank reaches every rank and they all take the same decision.

    Parameters without a gradient are skipped: every rank samples the same fragments, so the same
    ones lack it everywhere.

    Returns:
        ``(global count, [extra totals])``; in one process ``(count, extras)`` and the gradients
        untouched.
    """
    if not is_active():
        return count, [float(e) for e in extras]
    grads = [p.grad for p in params if p.grad is not None]
    device = grads[0].device if grads else _comm_device()
    dtype = grads[0].dtype if grads else torch.float32
    head = torch.tensor([float(count), *map(float, extras)], dtype=dtype, device=device)
    flat = torch.cat([head, *(g.reshape(-1) for g in grads)]).to(_comm_device(device))
    dist.all_reduce(flat)
    flat = flat.to(device)
    total = float(flat[0])
    if total > 0:
        offset = head.numel()
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g) / total)
            offset += n
    return int(round(total)), [float(v) for v in flat[1:head.numel()]]


def broadcast_(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values (in place)."""
    if not is_active():
        return
    tensors = list(tensors)
    if not tensors:
        return
    device = tensors[0].device
    flat = torch.cat([t.detach().reshape(-1).to(device) for t in tensors]).to(_comm_device(device))
    dist.broadcast(flat, src)
    offset = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def max_divergence(tensors: Iterable[torch.Tensor]) -> float:
    """The largest absolute difference of ``tensors`` between any rank and rank 0 (0.0 alone)."""
    if not is_active():
        return 0.0
    mine = [t.detach().clone() for t in tensors]
    ref = [t.clone() for t in mine]
    broadcast_(ref)
    diff = max((float((a - b).abs().max()) for a, b in zip(mine, ref) if a.numel()), default=0.0)
    return all_reduce_max(diff)


def all_reduce_max(value: float) -> float:
    """The largest ``value`` over all ranks."""
    if not is_active():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s JSON-serialisable ``obj`` on every rank (sent as JSON text, never pickled)."""
    if not is_active():
        return obj
    text = json.dumps(obj) if dist.get_rank() == src else ""
    data = torch.tensor(list(text.encode()), dtype=torch.uint8)
    size = torch.tensor([data.numel()], dtype=torch.int64)
    dev = _comm_device()
    size = size.to(dev)
    dist.broadcast(size, src)
    buf = torch.zeros(int(size), dtype=torch.uint8, device=dev)
    if dist.get_rank() == src:
        buf.copy_(data.to(dev))
    dist.broadcast(buf, src)
    return json.loads(bytes(buf.cpu().tolist()).decode())


def sync_batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                    weight: torch.Tensor | None, bias: torch.Tensor | None, momentum: float,
                    eps: float) -> torch.Tensor:
    """Training-mode batch norm of ``x`` (N, C, ...) with the statistics of the whole global batch.

    Each rank contributes its count, mean and sum of squared deviations per channel; they are
    combined exactly (Chan et al.'s parallel variance). The backward pass uses batch norm's
    closed-form input gradient with the global sums of ``dy`` and ``dy·x̂`` (one more all-reduce),
    as :class:`torch.nn.SyncBatchNorm` does: composing the gradient through the statistics by
    autograd is exact in theory but loses about two digits in float32, which a deep supernet
    amplifies into percent-level gradient errors. Running statistics (when given) are updated in
    place with the unbiased global variance, as :func:`F.batch_norm` does.
    """
    if not is_active():
        return F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)
    shape = (1, -1, *([1] * (x.dim() - 2)))
    y, mean, var, total = _SyncBatchNorm.apply(x, eps)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            unbiased = var * (total / max(total - 1.0, 1.0))
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return y


def _all_reduce_(t: torch.Tensor) -> torch.Tensor:
    comm = t.to(_comm_device(t.device))
    dist.all_reduce(comm)
    return comm.to(t.device) if comm is not t else t


class _SyncBatchNorm(torch.autograd.Function):
    """``x̂ = (x − μ) / sqrt(σ² + eps)`` with global μ, σ²; returns ``(x̂, μ, σ², N)``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, eps: float):  # type: ignore[override]
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = (1, -1, *([1] * (x.dim() - 2)))
        n_local = x.numel() // c if c else 0
        if n_local:
            var_l, mean_l = torch.var_mean(x.detach(), dim=dims, correction=0)
        else:  # an empty shard still takes part in the exchange
            var_l = mean_l = x.new_zeros(c)
        r, w = dist.get_rank(), dist.get_world_size()
        # A (world, 3, C) tensor holding only this rank's row: summed over ranks, it gathers all rows.
        rows = torch.stack([mean_l, var_l * n_local, torch.full_like(mean_l, float(n_local))])
        gathered = _all_reduce_(F.pad(rows.unsqueeze(0), (0, 0, 0, 0, r, w - r - 1)))
        means, m2s, counts = gathered[:, 0], gathered[:, 1], gathered[:, 2]
        n = counts.sum(0)
        mean = (counts * means).sum(0) / n
        var = (m2s.sum(0) + (counts * (means - mean).pow(2)).sum(0)) / n
        invstd = torch.rsqrt(var + eps)
        xhat = (x - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(xhat, invstd)
        ctx.total = float(n[0]) if n.numel() else 0.0
        ctx.mark_non_differentiable(mean, var)
        return xhat, mean, var, ctx.total

    @staticmethod
    def backward(ctx: Any, dxhat: torch.Tensor, *_):  # type: ignore[override]
        xhat, invstd = ctx.saved_tensors
        dims = [0, *range(2, xhat.dim())]
        shape = (1, -1, *([1] * (xhat.dim() - 2)))
        # Every rank's outputs depend on every rank's inputs through μ and σ²: the sums are global.
        sums = _all_reduce_(torch.cat([dxhat.sum(dims), (dxhat * xhat).sum(dims)]))
        c = xhat.shape[1]
        mean_dy, mean_dy_xhat = sums[:c] / ctx.total, sums[c:] / ctx.total
        dx = (dxhat - mean_dy.view(shape) - xhat * mean_dy_xhat.view(shape)) * invstd.view(shape)
        return dx, None


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's share of every batch of ``batch_sampler``: the samples ``rank::world_size``.

    All ranks hold the same seeded ``batch_sampler`` and so walk the same global batches; the
    union of the shards of a batch is the batch a single process would take. With ``drop_small``
    (training) a global batch smaller than the number of ranks is skipped on every rank, so every
    rank takes the same number of steps; without it (evaluation) a rank whose shard would be empty
    skips it, so ranks may see different numbers of batches (evaluation totals over ranks only
    after its loop). In one process this is ``batch_sampler``.
    """

    def __init__(self, batch_sampler: Any, rank: int | None = None, world_size: int | None = None,
                 drop_small: bool = True) -> None:
        self.batch_sampler = batch_sampler
        self.rank = globals()["rank"]() if rank is None else rank
        self.world_size = globals()["world_size"]() if world_size is None else world_size
        self.drop_small = drop_small
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        if batch_sampler.batch_size < self.world_size:
            raise TasError(f"--batch-size {batch_sampler.batch_size} is the global batch and must be at least the "
                           f"number of processes ({self.world_size})")

    @property
    def sampler(self) -> Any:
        return self.batch_sampler.sampler

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            if self.drop_small and len(batch) < self.world_size:
                continue
            shard = list(batch)[self.rank::self.world_size]
            if shard:
                yield shard

    def __len__(self) -> int:
        n = len(self.batch_sampler)
        if self.world_size == 1 or n == 0:
            return n
        bs, total = self.batch_sampler.batch_size, len(self.batch_sampler.sampler)
        last = total - (n - 1) * bs
        small = last < self.world_size if self.drop_small else last <= self.rank
        return n - (1 if small else 0)
