"""Run-level TensorBoard records: custom-scalars layouts, the HParams session, the model graph.

Every search, teacher and distillation run is one HParams *session* (its run directory). They all
declare the same experiment (:data:`HPARAMS`, :data:`METRICS`), so TensorBoard's HParams tab lists
runs of every stage side by side, a setting a stage lacks left blank. A session's results are the
``hparams/<name>`` scalars written at its final step.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import torch
import time

__all__ = ["SEARCH_LAYOUT", "TRAIN_LAYOUT", "HPARAMS", "METRICS", "search_hparams", "train_hparams",
           "search_results", "train_results", "log_session", "log_graph"]

#: the search's Custom Scalars tab: the budget on one chart, the two steps' losses on another
SEARCH_LAYOUT = {
    "search": {
        "budget (fraction of the original): target, band floor, expected, argmax": [
            "Multiline", [r"^search/target_ratio$", r"^search/band_low$", r"^search/expected_ratio$",
                          r"^search/derived_ratio$"]],
        "losses: weight step CE (train half), arch step CE (val half), arch loss": [
            "Multiline", [r"^search/weight_loss$", r"^search/arch_ce$", r"^search/arch_loss$"]],
    },
}
#: training and distillation runs: train loss (and its CE/KD terms) with the test loss
TRAIN_LAYOUT = {
    "training": {
        "losses: train (per update) and test (per epoch)": ["Multiline", [r"^train/(loss|ce|kd)$", r"^val/loss$"]],
        "test top-1 (student and teacher)": ["Multiline", [r"^val/top1$", r"^val/teacher_top1$"]],
    },
}

#: hyperparameters every session may set: name -> (type, description)
HPARAMS: dict[str, tuple[type, str]] = {
    "stage": (str, "teacher, search or distill"),
    "model": (str, "timm model name"),
    "dataset": (str, "dataset"),
    "method": (str, "what produced the architecture (tas, uniform, random, ...)"),
    "selection": (str, "channel selection: prefix or sapp"),
    "metric": (str, "budget metric: flops, params or latency"),
    "ratio": (float, "target cost ratio"),
    "k": (float, "fragments sampled per group (K)"),
    "tau_max": (float, "Gumbel temperature at the start"),
    "tau_min": (float, "Gumbel temperature at the end"),
    "epochs": (float, "epochs of this stage"),
    "seed": (float, "random seed"),
    "lr": (float, "weight learning rate"),
    "init": (str, "distillation start: inherit or scratch"),
    "kd_alpha": (float, "distillation: weight of the KD term (0 with --no-kd)"),
    "kd_temperature": (float, "distillation: KD temperature"),
}
#: the HParams tab shows five columns at first: those an experiment marks ``differs``, by name
SHOWN_FIRST = ("stage", "selection", "ratio", "epochs", "seed")
#: results, as ``hparams/<name>`` scalars: name -> description
METRICS: dict[str, str] = {  # in the order of the HParams table's columns
    "top1": "trained / distilled test top-1",
    "top1_hard_mode": "search: hard-mode test top-1 of the decoded architecture",
    "flops_ratio": "FLOPs kept (fraction of the original)",
    "params_ratio": "params kept (fraction of the original)",
    "pre_decode_ratio": "search: argmax cost ratio before the decode",
    "decode_moves": "search: candidate steps the decode took",
    "landing_steps": "search: architecture steps past its end that brought the argmax into the band",
    "measured_latency_ratio": "latency search: measured latency ratio of the slim network",
}


def search_hparams(cfg: Any, arch: Any, k: int) -> dict[str, Any]:
    """The HParams settings of a search (``cfg`` a :class:`~tas.nas.config.SearchConfig`)."""
    return {"stage": "search", "model": arch.model, "dataset": cfg.dataset, "method": arch.method,
            "selection": cfg.selection, "metric": cfg.metric, "ratio": cfg.ratio, "k": k,
            "tau_max": cfg.tau_max, "tau_min": cfg.tau_min, "epochs": cfg.epochs, "seed": cfg.seed, "lr": cfg.lr}


def search_results(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The HParams results of a search from its ``metrics.json``."""
    out = {"flops_ratio": metrics["flops_ratio"], "params_ratio": metrics["params_ratio"],
           "pre_decode_ratio": metrics["pre_decode_ratio"], "decode_moves": metrics["projection_steps"],
           "landing_steps": metrics.get("landing_steps", 0), "top1_hard_mode": metrics["top1_hard_mode"]}
    if "measured_latency_ratio" in metrics:
        out["measured_latency_ratio"] = metrics["measured_latency_ratio"]
    return out


def train_hparams(cfg: Any, mode: str, arch: Mapping[str, Any] | None) -> dict[str, Any]:
    """The HParams settings of a teacher or distillation run; ``arch`` is the distilled arch's dict."""
    out = {"stage": mode, "model": cfg.model, "dataset": cfg.dataset, "epochs": cfg.epochs, "seed": cfg.seed,
           "lr": cfg.lr}
    if arch is not None:
        meta = arch.get("meta", {})
        out.update({"method": arch.get("method", ""), "selection": meta.get("selection", ""),
                    "metric": meta.get("metric", ""), "init": cfg.init,
                    "kd_alpha": 0.0 if cfg.no_kd else cfg.kd_alpha, "kd_temperature": cfg.kd_temperature})
        if meta.get("target_ratio") is not None:
            out["ratio"] = meta["target_ratio"]
    return {k: v for k, v in out.items() if v is not None}


def train_results(metrics: Mapping[str, Any], arch: Mapping[str, Any] | None) -> dict[str, float]:
    """The HParams results of a teacher or distillation run (the arch's kept FLOPs and params too)."""
    out = {"top1": metrics["top1"]}
    if arch is not None:
        out.update(flops_ratio=arch["flops"] / arch["full_flops"], params_ratio=arch["params"] / arch["full_params"])
    return out


def _hparams_summary(tag: str, **data: Any) -> Any:
    """A summary carrying one HParams plugin record (``experiment``, ``session_start_info`` or
    ``session_end_info``), built from TensorBoard's protos alone (its helpers import TensorFlow)."""
    from tensorboard.compat.proto.summary_pb2 import Summary  # why: tensorboard's protobufs are slow to import; only runs that log need them
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    smd = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(**data))
    return Summary(value=[Summary.Value(tag=tag, metadata=smd)])


def log_session(writer: Any, hparams: Mapping[str, Any], results: Mapping[str, float], step: int) -> None:
    """Write this run's HParams session: the experiment, its settings, ``hparams/<name>`` results at
    ``step``, and a successful end. Undeclared names are refused (they would never show)."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2  # why: tensorboard's protobufs are slow to import; only runs that log need them

    unknown = sorted(set(hparams) - set(HPARAMS)) + sorted(set(results) - set(METRICS))
    if unknown:
        raise ValueError(f"not declared in tas.tb.runs.HPARAMS / METRICS: {unknown}")
    file_writer = getattr(writer, "file_writer", None)
    if file_writer is None:  # the no-op writer of ranks other than 0
        return
    kinds = {str: api_pb2.DATA_TYPE_STRING, float: api_pb2.DATA_TYPE_FLOAT64}
    experiment = api_pb2.Experiment(
        description="tas runs: teacher, search and distillation",
        hparam_infos=[api_pb2.HParamInfo(name=n, type=kinds[t], description=d, differs=n in SHOWN_FIRST)
                      for n, (t, d) in HPARAMS.items()],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=f"hparams/{n}"), display_name=n, description=d)
                      for n, d in METRICS.items()])
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in hparams.items():
        if HPARAMS[name][0] is float:
            start.hparams[name].number_value = float(value)
        else:
            start.hparams[name].string_value = str(value)
    file_writer.add_summary(_hparams_summary(metadata.EXPERIMENT_TAG, experiment=experiment))
    file_writer.add_summary(_hparams_summary(metadata.SESSION_START_INFO_TAG, session_start_info=start))
    for name, value in results.items():
        if value is not None and math.isfinite(float(value)):
            writer.add_scalar(f"hparams/{name}", float(value), step)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    file_writer.add_summary(_hparams_summary(metadata.SESSION_END_INFO_TAG, session_end_info=end))


def log_graph(writer: Any, model: torch.nn.Module, input_size: Any) -> None:
    """The model's traced graph (Graphs tab), from one input of ``input_size`` on its device.

    A model the tracer cannot handle costs only its graph: a warning, never the finished run.
    """
    if getattr(writer, "file_writer", None) is None:
        return
    device = next(model.parameters()).device
    was_training = model.training
    try:
        with warnings.catch_warnings():  # the tracer's deprecation and TracerWarnings say nothing of the run
            warnings.simplefilter("ignore")
            writer.add_graph(model.eval(), torch.zeros(1, *input_size, device=device))
    except Exception as e:  # noqa: BLE001 - tracing is best effort; the run is already written
        print(f"warning: TensorBoard graph not written ({type(e).__name__}: {e})")
    finally:
        model.train(was_training)
