"""Candidate search-speed optimisations for ``benchmarks/search_overhead.py --profile``, patched into
the running process only (tas is not edited), and the check that each leaves the numbers as they are.

Each patch is a prototype of a change to ``tas.nas.ops`` or ``tas.nas.supernet``: Gumbel weights folded into
the BN affine (``fold``), all candidate BNs of a layer fused into one BN + one 1x1 conv (``fused``),
CWI as a gather (``gather``), weights sliced as views for prefix selections (``prefix``) and a
vectorised expected cost (``vcost``). :func:`patched` applies a set of them for a ``with`` body;
:func:`check_patches` measures how far each moves logits, gradients and BN statistics;
:func:`source_has` tells which of them tas already has.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import sys
from collections import Counter
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

import tas.nas.ops as tas_ops
import tas.prune.slicing as tas_slicing
from tas.nas import searcher as searching
from tas.nas.interp import channel_interp, interp_matrix

_ORIG = {"SearchBN.forward": tas_ops.SearchBN.forward}

# ------------------------------------------------------------------------------------------------
# --profile: candidate optimisations, patched into this process only
# ------------------------------------------------------------------------------------------------
class _ScaledBN:
    """A BN seen through ``tas.nas.ops.batch_norm_at`` with its affine parameters multiplied by ``w``
    (running statistics and ``num_batches_tracked`` are the wrapped BN's own, updated in place)."""

    def __init__(self, bn: torch.nn.BatchNorm2d, w: torch.Tensor) -> None:
        self._bn, self.weight, self.bias = bn, bn.weight * w, bn.bias * w

    def __getattr__(self, name: str):
        return getattr(self._bn, name)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # batch_norm_at(bn, x, None) calls bn(x)
        return tas_ops.batch_norm_at(self, x, x.shape[1])


def _foldable(bn) -> bool:
    act = getattr(bn, "act", None)  # w * act(BN(x)) != act(w * BN(x)) in general: fold plain BNs only
    return bn.affine and (act is None or isinstance(act, torch.nn.Identity))


def _folded_searchbn_forward(self, x: torch.Tensor) -> torch.Tensor:
    """SearchBN.forward with each fragment's Gumbel weight folded into its BN's affine parameters
    (CWI is linear and per-pixel, so ``CWI(w * BN(x)) == CWI(BN with w*gamma, w*beta)(x)``): no
    full-size multiply per fragment in the forward, and no full-size multiply + reduction per
    fragment in the backward (the weight's gradient becomes a per-channel one)."""
    g = self.group[0]
    if g.fragments is None:
        return _ORIG["SearchBN.forward"](self, x)
    width = x.shape[1]
    out = None
    for j, pos, chans, weight in g.fragments:
        bn = self.bns[j]
        scaled = weight is not None and _foldable(bn)
        if scaled:
            bn = _ScaledBN(bn, weight)
        scale = g.scale_at(chans)  # SA++ attention at the fragment's channels (None under prefix)
        if pos is None:
            y = tas_ops.batch_norm_at(bn, x, chans, scale)
        elif isinstance(pos, int):
            y = tas_ops.channel_interp(tas_ops.batch_norm_at(bn, x[:, :pos], chans, scale), width)
        else:
            y = tas_ops.channel_interp(tas_ops.batch_norm_at(bn, x.index_select(1, pos), chans, scale), width)
        if weight is not None and not scaled:
            y = y * weight
        out = y if out is None else out + y
    return out


def _fused_searchbn_forward(self, x: torch.Tensor) -> torch.Tensor:
    """SearchBN.forward in training mode as ONE normalisation and ONE 1x1 conv, for prefix fragments.

    In training mode every candidate BN normalises a channel with the same batch statistics; the
    candidates differ only in their affine parameters and in which running statistics they update.
    So ``sum_j w_j * CWI_j(gamma_j * xhat[:, :c_j] + beta_j)`` is ``M @ xhat + b`` with a C x C matrix
    ``M = sum_j w_j * I_j * diag(gamma_j)`` (``I_j`` the C x c_j CWI matrix) and
    ``b = sum_j w_j * I_j @ beta_j``, both built from per-channel tensors. The K BN passes, the CWI
    einsums and the weighted sum become one ``batch_norm`` without affine and one ``conv2d`` (1x1).
    Anything else (eval mode, index fragments, SA++ scales, fused activations) takes the original path.
    """
    g = self.group[0]
    frags = g.fragments
    bns = self.bns
    if (frags is None or not bns[0].training or len(frags[0]) != 4
            or any(not (p is None or isinstance(p, int)) or not (c is None or isinstance(c, int)) for _, p, c, _ in frags)
            or any(not bns[j].affine or not bns[j].track_running_stats or hasattr(bns[j], "act")
                   or bns[j].eps != bns[0].eps for j, *_ in frags)
            or getattr(g, "attn_logits", None) is not None):
        return _ORIG["SearchBN.forward"](self, x)
    C = x.shape[1]
    mean, var = x.new_zeros(C), x.new_ones(C)
    # momentum 1: the buffers receive the batch mean and unbiased variance
    xhat = F.batch_norm(x, mean, var, None, None, True, 1.0, bns[0].eps)
    M, b = None, None
    for j, pos, chans, w in frags:
        bn = bns[j]
        c = C if pos is None else pos
        with torch.no_grad():  # the running statistics of BN j at its channels, as batch_norm_at does
            bn.num_batches_tracked.add_(1)
            f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean[:c].mul_(1 - f).add_(mean[:c], alpha=f)
            bn.running_var[:c].mul_(1 - f).add_(var[:c], alpha=f)
        gam, bet = bn.weight[:c], bn.bias[:c]
        if w is not None:
            gam, bet = gam * w, bet * w
        if c == C:
            mj, bj = torch.diag(gam), bet
        else:
            inter = interp_matrix(c, C, x.device, x.dtype)  # (C, c)
            mj, bj = F.pad(inter * gam, (0, C - c)), inter @ bet
        M = mj if M is None else M + mj
        b = bj if b is None else b + bj
    return F.conv2d(xhat, M[:, :, None, None], b)


_GATHER: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _gather_interp(x: torch.Tensor, channels: int) -> torch.Tensor:
    """CWI for the widening case (C < channels): every output channel averages 1 or 2 neighbouring
    inputs, so two index_selects and an add replace einsum's permute-copies + bmm."""
    c = x.shape[1]
    if c >= channels:
        return channel_interp(x, channels)
    key = (c, channels, str(x.device))
    if key not in _GATHER:
        lo = [(t * c) // channels for t in range(channels)]
        hi = [-((-(t + 1) * c) // channels) - 1 for t in range(channels)]
        assert all(h - l <= 1 for l, h in zip(lo, hi))
        _GATHER[key] = (torch.tensor(lo, device=x.device), torch.tensor(hi, device=x.device))
    lo, hi = _GATHER[key]
    return (x.index_select(1, lo) + x.index_select(1, hi)) * 0.5


_PREFIX: dict[tuple[int, int, int], bool] = {}


def _prefix_take(t: torch.Tensor, idx: torch.Tensor | None, dim: int) -> torch.Tensor:
    """``take_channels`` that slices (a view) when the indices are 0..n-1, as every TAS search selection is
    with the canonical channel order; index_select's backward is a scatter into a zero tensor."""
    if idx is None or idx.numel() == t.shape[dim]:
        return t
    key = (id(idx), idx.data_ptr(), idx.numel())
    p = _PREFIX.get(key)
    if p is None:
        p = _PREFIX[key] = bool(torch.equal(idx, torch.arange(idx.numel(), device=idx.device)))
    return t.narrow(dim, 0, idx.numel()) if p else t.index_select(dim, idx)


class VectorCost:
    """``Supernet.expected_cost`` as ~15 tensor ops instead of a Python loop over cost terms."""

    def __init__(self, supernet, metric: str) -> None:
        groups = list(supernet.groups().values())
        stages = list(supernet.graph.stages)
        gidx = {n: i for i, n in enumerate(supernet.groups())}
        sidx = {n: i for i, n in enumerate(stages)}
        self.supernet, self.metric = supernet, metric
        self.fixed = float(supernet.cost.fixed[metric])
        terms = supernet.cost.terms[metric]
        cw = max(len(g.widths) for g in groups)
        self.maxp = max([max(Counter(t.groups).values(), default=1) for t in terms] + [1])
        # width logits: cat(alphas + [0, -inf]) gathered into a (G, cw) padded matrix
        self.alphas = [g.alpha for g in groups if g.alpha is not None]
        n_alpha = sum(a.numel() for a in self.alphas)
        zero_i, ninf_i = n_alpha, n_alpha + 1
        gather, off = [], 0
        widths = torch.zeros(len(groups), cw)
        for i, g in enumerate(groups):
            widths[i, :len(g.widths)] = torch.tensor(g.widths, dtype=torch.float32)
            if g.alpha is None:
                gather.append([zero_i] + [ninf_i] * (cw - 1))
            else:
                k = len(g.widths)
                gather.append(list(range(off, off + k)) + [ninf_i] * (cw - k))
                off += k
        self.wgather = torch.tensor(gather)
        self.wpow = torch.stack([widths.pow(p) for p in range(1, self.maxp + 1)], -1)  # (G, cw, P)
        one_slot = len(groups) * self.maxp
        nf = max([len(Counter(t.groups)) for t in terms] + [1])
        fidx = []
        for t in terms:
            row = [gidx[g] * self.maxp + (p - 1) for g, p in Counter(t.groups).items()]
            fidx.append(row + [one_slot] * (nf - len(row)))
        self.fidx = torch.tensor(fidx, dtype=torch.long)
        self.coeff = torch.tensor([t.coeff for t in terms], dtype=torch.float32)
        # depth logits, same trick; keep(term) = sum of depth probs over depths > block index
        self.betas, self.stage_rows = [], []
        dw = max(len(supernet.stage_depths[n]) for n in stages) if stages else 1
        n_beta = sum(supernet.betas[k].numel() for k in supernet.betas)
        zero_b, ninf_b = n_beta, n_beta + 1
        dg, off = [], 0
        depths = torch.zeros(len(stages) + 1, dw)
        for i, n in enumerate(stages):
            d = supernet.stage_depths[n]
            depths[i, :len(d)] = torch.tensor(d, dtype=torch.float32)
            key = n.replace(".", "__")
            if key in supernet.betas:
                self.betas.append(supernet.betas[key])
                dg.append(list(range(off, off + len(d))) + [ninf_b] * (dw - len(d)))
                off += len(d)
            else:
                dg.append([zero_b] + [ninf_b] * (dw - 1))
        dg.append([zero_b] + [ninf_b] * (dw - 1))  # a constant row for terms outside any block
        depths[len(stages), 0] = 1e9
        self.dgather = torch.tensor(dg)
        srow, thr = [], []
        for t in terms:
            if t.block is None or t.block[1] == 0:
                srow.append(len(stages)), thr.append(-1.0)
            else:
                srow.append(sidx[t.block[0]]), thr.append(float(t.block[1]))
        self.kmask = (depths[torch.tensor(srow)] > torch.tensor(thr)[:, None]).float()  # (T, dw)
        self.srow = torch.tensor(srow)
        self.pad = torch.tensor([0.0, float("-inf")])

    def __call__(self, metric: str | None = None) -> torch.Tensor:
        logits = torch.cat(self.alphas + [self.pad])[self.wgather]
        probs = torch.softmax(logits, -1)  # (G, cw)
        moments = (probs.unsqueeze(-1) * self.wpow).sum(1).flatten()  # (G*P,)
        factors = torch.cat([moments, moments.new_ones(1)])[self.fidx].prod(-1)  # (T,)
        dprobs = torch.softmax(torch.cat(self.betas + [self.pad])[self.dgather], -1)  # (S+1, dw)
        keep = (dprobs[self.srow] * self.kmask).sum(-1)
        return (self.coeff * factors * keep).sum() + self.fixed


@contextlib.contextmanager
def patched(bench: Any, names: set[str]) -> Iterator[None]:
    """Apply the named candidate optimisations to tas (and this supernet) for the ``with`` body."""
    saved_fwd, saved_interp, saved_take = tas_ops.SearchBN.forward, tas_ops.channel_interp, tas_slicing.take_channels
    had_cost = "expected_cost" in bench.supernet.__dict__
    try:
        if "fold" in names:
            tas_ops.SearchBN.forward = _folded_searchbn_forward
        if "fused" in names:
            tas_ops.SearchBN.forward = _fused_searchbn_forward
        if "gather" in names:
            tas_ops.channel_interp = _gather_interp
        if "prefix" in names:
            tas_ops.take_channels = tas_slicing.take_channels = _prefix_take  # both modules call it
        if "vcost" in names:
            bench.supernet.expected_cost = bench.vcost
        yield
    finally:
        tas_ops.SearchBN.forward, tas_ops.channel_interp = saved_fwd, saved_interp
        tas_ops.take_channels = tas_slicing.take_channels = saved_take
        if "vcost" in names and not had_cost:
            del bench.supernet.expected_cost




def check_patches(bench: Any) -> dict[str, float]:
    """How far each patch moves the logits, the gradients of every parameter (weights and alpha/beta)
    and the BN running statistics from the original (a float64 copy of the supernet, same Gumbel
    draws, one training-mode forward + backward, buffers restored after), and expected_cost with its
    gradient (float32): max |difference| / max |value|."""
    # in float64, so that what is left is the patch and not float32 rounding in another order
    # (the current fragments/depth mixtures hold non-leaf tensors, which deepcopy refuses: set aside)
    src = bench.supernet
    groups, stages = list(src.groups().values()), list(src.stages().values())
    saved_state = (src.generator, [g.fragments for g in groups], [st.mix for st in stages])
    src.generator = None
    for g in groups:
        g.fragments = None
    for st in stages:
        st.mix = None
    try:
        s = copy.deepcopy(src).double()
    finally:
        src.generator = saved_state[0]
        for g, f in zip(groups, saved_state[1]):
            g.fragments = f
        for st, m in zip(stages, saved_state[2]):
            st.mix = m
    s.generator = torch.Generator().manual_seed(1)
    view = type("View", (), {})()
    view.supernet = s
    x = bench.batches[0][0][:16].double()
    buffers = [b for b in s.buffers() if b.is_floating_point() or b.dtype == torch.long]
    saved = [b.clone() for b in buffers]

    params = [p for p in s.parameters() if p.requires_grad]

    def run(names: set[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        state = s.generator.get_state()
        with patched(view, names):
            y = s(x)
            grads = torch.autograd.grad(y.square().mean(), params, allow_unused=True)
        y = y.detach()
        after = [b.clone() for b in buffers] + [g for g in grads if g is not None]
        s.generator.set_state(state)
        for b, v in zip(buffers, saved):
            b.copy_(v)
        return y, after

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) if a.numel() else 0.0

    out = {}
    ref, ref_bufs = run(set())
    for names in (["fold"], ["gather"], ["prefix"], ["fused"], ["fold", "gather", "prefix"], ["fused", "prefix"]):
        key = "+".join(names)
        try:
            new, new_bufs = run(set(names))
            out[key] = max([rel(ref, new)] + [rel(a.double(), b.double()) for a, b in zip(ref_bufs, new_bufs)])
        except Exception as e:  # noqa: BLE001  (tas changed under the prototype)
            out[key] = float("nan")
            print(f"  patch {key} does not apply to this tas: {type(e).__name__}: {e}", file=sys.stderr)
    e_ref = bench.supernet.expected_cost("flops")
    g_ref = torch.autograd.grad(e_ref, bench.a_params)
    e_new = bench.vcost("flops")
    g_new = torch.autograd.grad(e_new, bench.a_params)
    out["vcost"] = max([rel(e_ref.detach(), e_new.detach())] + [rel(a, b) for a, b in zip(g_ref, g_new)])
    return out


def source_has(fn: Callable, text: str) -> bool:
    """Whether ``fn``'s source contains ``text``: is a candidate optimisation already in tas?"""
    try:
        return text in inspect.getsource(fn)
    except (OSError, TypeError):
        return False


#: whether tas's own weight step back-propagates into the weights only (then "as is" does too)
WEIGHT_INPUTS_IN_TAS = source_has(searching.Searcher._step, ".backward(inputs=")


# ------------------------------------------------------------------------------------------------
LEGEND = [
    "The ablations patch candidate optimisations into this process only (tas is not edited); each is checked "
    "against the original below. What they are:",
    "",
    "Variants marked *[already in tas]* are optimisations the measured tas already has (it was changed while "
    "this benchmark was written); they should save nothing.",
    "",
    "* **backward(inputs=...)** -- `loss.backward(inputs=params)` with only the parameters the step's optimiser "
    "updates. In the arch step this skips every conv/BN/fc *weight* gradient (convolution_backward then computes "
    "the input gradient only, and the index_select scatters go) that `ArchStepper.step` computes today and the next "
    "weight step's `zero_grad` throws away; in the weight step it skips the gradients of the Gumbel mixing weights "
    "(a full-size multiply + reduction per fragment) and of alpha/beta, which the arch step's `zero_grad` throws away.",
    "* **fold** -- each fragment's Gumbel weight multiplies its BN's gamma and beta instead of the BN output "
    "(`CWI(w * BN(x)) == BN_{w*gamma, w*beta}(x)` stretched, CWI being linear): one full-size multiply per fragment "
    "fewer forward, and a per-channel instead of a full-size gradient for the weight.",
    "* **gather** -- CWI widening C -> C' (C < C') as two `index_select`s and an average (each output channel "
    "averages one or two neighbours) instead of `einsum('oc,bchw->bohw')` (permute copies + bmm).",
    "* **prefix** -- conv/fc weights sliced with `narrow` (a view) when the selected channels are 0..n-1, as every "
    "prefix-selection search selection is, instead of `index_select` (whose backward is a scatter into zeros).",
    "* **fused** -- in training mode all candidate BNs of a layer use the same batch statistics, so the K fragments "
    "`sum_j w_j CWI_j(gamma_j xhat[:, :c_j] + beta_j)` are one `batch_norm` without affine followed by one 1x1 "
    "conv with a C x C matrix `sum_j w_j I_j diag(gamma_j)` (I_j the CWI matrix) and bias `sum_j w_j I_j beta_j`, "
    "both built from per-channel tensors (running statistics updated per candidate as before).",
    "* **vcost** -- `expected_cost` as ~15 tensor ops over padded (groups x candidates) tensors instead of a "
    "Python loop that builds a few tensors per cost term.",
    "* **bounds** -- K=1 (one fragment per group: the widest, one BN, no CWI, no mixing) and hard mode at the full "
    "architecture (the wrappers with nothing to mix) show what the fragment machinery costs in total.",
]
