"""The micro-models a latency table times, and how each runtime builds and runs them.

A :class:`MicroSpec` says what one timed model is (a layer's conv + BN + ReLU or linear layer at
some width, the whole original network, or an empty model); :class:`MicroRuntime` turns it into a
:class:`Runnable` for ``torch-cpu`` / ``torch-cuda``, or into an ONNX file for ``ort-cpu``, written
directly with ``onnx.helper`` (:func:`_onnx_micro`) rather than through the exporter (see
:mod:`tas.deploy.latency`).
"""
from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from ..export import INPUT_NAME, OUTPUT_NAME, export_graph, ort_session

#: ONNX opset / IR version of the micro-models (ONNX Runtime 1.2x reads IR 10)
_OPSET, _IR_VERSION = 18, 10


@dataclass(frozen=True)
class MicroSpec:
    """What one timed model is.

    ``kind``: ``conv`` (conv [+ BN] + ReLU), ``linear``, ``model`` (the whole original network;
    ``c_in``/``in_hw`` are its input) or ``null`` (an empty model: the per-call cost).
    """

    kind: str
    layer: str | None = None
    c_in: int = 1
    c_out: int = 1
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: Any = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = False
    bn: bool = False
    in_hw: tuple[int, ...] = ()
    batch: int = 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.kind in ("linear", "null"):
            return (self.batch, self.c_in)
        return (self.batch, self.c_in, *self.in_hw)

    @property
    def weight_bytes(self) -> int:
        if self.kind == "conv":
            return 4 * self.c_out * (self.c_in // self.groups) * math.prod(self.kernel)
        if self.kind == "linear":
            return 4 * self.c_in * self.c_out
        return 0


class Runnable:
    """What a timer is handed: ``spec`` (a :class:`MicroSpec`), ``model`` (an ORT session or an
    ``nn.Module``) and ``__call__(input)``, one complete run (CUDA runs are synchronised)."""

    def __init__(self, spec: MicroSpec, model: Any, fn: Callable[[Any], Any]) -> None:
        self.spec, self.model, self._fn = spec, model, fn

    def __call__(self, x: Any) -> Any:
        return self._fn(x)

    def __repr__(self) -> str:
        return f"Runnable({self.spec})"


def _explicit_pads(padding: Any) -> list[int] | None:
    """``padding`` as ONNX ``pads`` (``[top, left, bottom, right]``); None for a string padding.
    A 2-entry padding is symmetric; a 4-entry one (a TF "same" conv's, see
    :func:`tas.deploy.latency.build._padding`) is already in this order."""
    if isinstance(padding, str):
        return None
    p = [int(v) for v in padding]
    return p * 2 if len(p) == 2 else p


def _torch_micro(spec: MicroSpec) -> nn.Module:
    if spec.kind == "conv":
        pads = _explicit_pads(spec.padding)
        layers: list[nn.Module] = []
        if pads is not None and pads[:2] != pads[2:]:
            # asymmetric (TF "same" with an odd total): padded first, as timm's Conv2dSame does
            layers.append(nn.ZeroPad2d((pads[1], pads[3], pads[0], pads[2])))
            padding: Any = 0
        else:
            padding = spec.padding if pads is None else tuple(pads[:2])
        layers.append(nn.Conv2d(spec.c_in, spec.c_out, spec.kernel, spec.stride, padding,
                                spec.dilation, spec.groups, bias=spec.bias))
        if spec.bn:
            layers.append(nn.BatchNorm2d(spec.c_out))
        layers.append(nn.ReLU())
        return nn.Sequential(*layers).eval()
    if spec.kind == "linear":
        return nn.Linear(spec.c_in, spec.c_out, bias=spec.bias).eval()
    if spec.kind == "null":
        return nn.Identity()
    raise ValueError(f"no micro-model for kind {spec.kind}")


def _onnx_micro(spec: MicroSpec, module: nn.Module) -> bytes | None:
    """``module`` as the ONNX graph the TorchScript exporter writes for it in eval mode (BN folded
    into the conv: ``Conv`` + ``Relu``, its ``pads`` possibly asymmetric; ``Gemm`` for a linear
    layer), built directly. None when the
    conv is not expressible that simply (string padding): the caller exports it instead."""
    from onnx import TensorProto, helper, numpy_helper  # why: slow to import (~1 s); only ONNX micro-models need it

    def value(name: str, shape: Sequence[Any]):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))

    nodes, inits = [], []
    if spec.kind == "conv":
        conv = next(m for m in module if isinstance(m, nn.Conv2d))
        pads = _explicit_pads(spec.padding)
        if pads is None or conv.padding_mode != "zeros":
            return None
        w = conv.weight.detach().double()
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(spec.c_out, dtype=torch.float64)
        if spec.bn:
            bn = next(m for m in module if isinstance(m, nn.BatchNorm2d))
            scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
            w = w * scale.view(-1, 1, 1, 1)
            b = (b - bn.running_mean.double()) * scale + bn.bias.detach().double()
        inits = [numpy_helper.from_array(w.float().numpy(), "weight"), numpy_helper.from_array(b.float().numpy(), "bias")]
        nodes = [helper.make_node("Conv", [INPUT_NAME, "weight", "bias"], ["conv_out"], kernel_shape=list(conv.kernel_size),
                                  strides=list(conv.stride), pads=pads, dilations=list(conv.dilation), group=conv.groups),
                 helper.make_node("Relu", ["conv_out"], [OUTPUT_NAME])]
        out_shape = ["batch", spec.c_out, None, None]
    elif spec.kind == "linear":
        inits = [numpy_helper.from_array(module.weight.detach().numpy(), "weight")]
        ins = [INPUT_NAME, "weight"]
        if module.bias is not None:
            inits.append(numpy_helper.from_array(module.bias.detach().numpy(), "bias"))
            ins.append("bias")
        nodes = [helper.make_node("Gemm", ins, [OUTPUT_NAME], transB=1)]
        out_shape = ["batch", spec.c_out]
    elif spec.kind == "null":
        nodes = [helper.make_node("Relu", [INPUT_NAME], [OUTPUT_NAME])]
        out_shape = ["batch", spec.c_in]
    else:
        raise ValueError(spec.kind)
    in_shape = ["batch", *spec.input_shape[1:]]
    out_shape = [d if d is not None else f"d{i}" for i, d in enumerate(out_shape)]
    graph = helper.make_graph(nodes, "micro", [value(INPUT_NAME, in_shape)], [value(OUTPUT_NAME, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="tas.deploy.latency")
    model.ir_version = _IR_VERSION
    return model.SerializeToString()


class MicroRuntime:
    """Builds :class:`Runnable`\\ s and inputs for one runtime; ``close()`` frees what it made."""

    def __init__(self, runtime: str, threads: int, exporter: str = "auto") -> None:
        self.runtime, self.threads, self.exporter = runtime, threads, exporter
        self.device = torch.device("cuda" if runtime == "torch-cuda" else "cpu")
        self._tmp = tempfile.TemporaryDirectory(prefix="tas-latency-") if runtime == "ort-cpu" else None
        self._inputs: dict[tuple[int, ...], Any] = {}
        self._count = 0
        self._saved_threads: int | None = None
        if runtime == "torch-cpu":
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(threads)

    @property
    def workdir(self) -> Path:
        """The scratch directory of the ONNX files (``ort-cpu`` only)."""
        return Path(self._tmp.name)

    def close(self) -> None:
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._inputs.clear()

    def input(self, shape: tuple[int, ...]) -> Any:
        if shape not in self._inputs:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(*shape, generator=gen)
            self._inputs[shape] = x.numpy() if self.runtime == "ort-cpu" else x.to(self.device)
        return self._inputs[shape]

    def _path(self, stem: str) -> Path:
        self._count += 1
        return Path(self._tmp.name) / f"{self._count}_{stem}.onnx"

    def make(self, spec: MicroSpec, whole: nn.Module | None = None) -> Runnable:
        if self.runtime == "ort-cpu":
            return self._make_ort(spec, whole)
        torch.manual_seed(0)
        module = copy.deepcopy(whole).eval() if spec.kind == "model" else _torch_micro(spec)
        module = module.to(self.device)
        if self.runtime == "torch-cuda":
            def run(x, m=module):
                out = m(x)
                torch.cuda.synchronize()
                return out
        else:
            def run(x, m=module):
                return m(x)
        return Runnable(spec, module, run)

    def file(self, spec: MicroSpec, whole: nn.Module | None = None) -> Path:
        """The ONNX file of ``spec`` (ort-cpu): built directly, or exported (the whole model)."""
        torch.manual_seed(0)
        module = copy.deepcopy(whole).eval() if spec.kind == "model" else _torch_micro(spec)
        path = self._path(spec.kind)
        data = None if spec.kind == "model" else _onnx_micro(spec, module)
        if data is not None:
            path.write_bytes(data)
        else:
            example = torch.randn(2, *spec.input_shape[1:], generator=torch.Generator().manual_seed(0))
            exporter = self.exporter if spec.kind == "model" else "torchscript"
            with torch.no_grad():
                export_graph(module, example, path, _OPSET, exporter)
        return path

    def _make_ort(self, spec: MicroSpec, whole: nn.Module | None) -> Runnable:
        session = ort_session(self.file(spec, whole), self.threads)
        return Runnable(spec, session, lambda x, s=session: s.run(None, {INPUT_NAME: x}))
