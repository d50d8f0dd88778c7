"""What a search and a distillation write to TensorBoard, read back with TensorBoard's own readers.

The heat-map figures are checked twice: as matplotlib objects (labels, cells, marks) and in the
event file, where a figure is a PNG whose height grows by :data:`tas.tb.figures.ROW_INCHES` per row.
"""
import json
import math
import re

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.util import tensor_util

import tas
from tas.prune.arch import Arch
from tas.tb.figures import DPI, ROW_INCHES, ProbRow, probability_figure
from tas.tb.search import arch_markdown, candidate_histogram

SEARCH = ["--dataset", "digits", "--limit", "256", "--batch-size", "32", "--epochs", "2", "--log-every", "2",
          "--no-progress", "--device", "cpu"]
ROW_PX = ROW_INCHES * DPI


@pytest.fixture(scope="module")
def runs(tmp_path_factory, search_script, train_script, teacher_run):
    """A prefix search at 50% FLOPs and a one-epoch distillation of its architecture."""
    root = tmp_path_factory.mktemp("tb")
    assert search_script.main(SEARCH + ["--teacher", str(teacher_run), "--flops-ratio", "0.5",
                                        "--output", str(root / "search")]) == 0
    assert train_script.main(["--dataset", "digits", "--limit", "128", "--batch-size", "32", "--epochs", "1",
                              "--no-progress", "--device", "cpu", "--arch", str(root / "search"),
                              "--teacher", str(teacher_run), "--output", str(root / "slim")]) == 0
    return root


def _accumulator(run):
    acc = EventAccumulator(str(run), size_guidance={"images": 0, "histograms": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def _tables(text):
    """``{"group": {name: cells}, "stage": {name: cells}}`` from the markdown tables of an ``arch``
    text (a table is named by its first header cell; ``cells`` are the rest of a row)."""
    tables, current = {}, None
    for line in text.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in line.strip()[1:-1].split("|")]
        if current is None:
            current = tables.setdefault(cells[0], {})
        elif not set(cells[0]) <= {"-"}:
            current[cells[0]] = tuple(cells[1:])
    return tables


# -- the heat-map figure itself ------------------------------------------------------------------
def test_probability_figure_labels_cells_and_marks():
    rows = [ProbRow("stem", [8, 16], [0.7, 0.3], chosen=16),
            ProbRow("layer1.0.conv1", [4, 8, 12, 16], [0.1, 0.2, 0.6, 0.1], chosen=12),
            ProbRow("layer2", [32], [1.0], chosen=32)]
    fig = probability_figure(rows, "t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["stem", "layer1.0.conv1", "layer2"]
    values = ax.images[0].get_array()
    assert values.shape == (3, 4)
    # the cells past a row's last candidate are masked (drawn blank), the others hold the probability
    assert values.mask.tolist() == [[False, False, True, True], [False] * 4, [False, True, True, True]]
    assert values[1, 2] == pytest.approx(0.6)
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert texts[(1, 2)] == "12\n0.60" and texts[(0, 1)] == "16\n0.30" and (0, 2) not in texts
    # argmax outlined: stem's 8 (col 0), layer1's 12 (col 2), layer2's only candidate
    boxes = sorted((round(p.get_y() + p.get_height() / 2), round(p.get_x() + p.get_width() / 2)) for p in ax.patches)
    assert boxes == [(0, 0), (1, 2), (2, 0)]
    # decoded choice starred: stem 16 (col 1, not its argmax), layer1 12, layer2 32
    stars = sorted((round(line.get_ydata()[0]), round(line.get_xdata()[0])) for line in ax.lines)
    assert stars == [(0, 1), (1, 2), (2, 0)]
    assert len(fig.axes) == 2  # the colour bar


def test_probability_figure_grows_by_one_row_height_per_row():
    def height(n):
        rows = [ProbRow(f"g{i}", [1, 2, 3], [0.2, 0.3, 0.5]) for i in range(n)]
        return probability_figure(rows, "t").get_size_inches()[1] * DPI
    assert height(40) - height(5) == pytest.approx(35 * ROW_PX)


# -- histograms ----------------------------------------------------------------------------------
def test_candidate_histogram_puts_each_candidate_inside_its_own_bucket(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    cands, probs = [8, 16, 24, 40], [0.1, 0.2, 0.3, 0.4]
    with SummaryWriter(str(tmp_path)) as w:
        candidate_histogram(w, "h", cands, probs, 3)
    values = [v for e in EventFileLoader(str(next(tmp_path.glob("events.*")))).Load()
              for v in e.summary.value if v.tag == "h"]
    buckets = tensor_util.make_ndarray(values[0].tensor)  # migrated by the loader: rows [left, right, count]
    assert len(buckets) == len(cands)
    for (left, right, count), c, p in zip(buckets, cands, probs):
        assert left < c < right and count == pytest.approx(p)
    # density (count / width) follows the probabilities wherever the spacing is even
    assert buckets[1][2] / (buckets[1][1] - buckets[1][0]) == pytest.approx(2 * buckets[0][2] / (buckets[0][1] - buckets[0][0]))


# -- the SA++ kept-blocks column -----------------------------------------------------------------
def test_arch_markdown_lists_sapp_kept_blocks():
    import timm

    supernet = tas.create_supernet(timm.create_model("cifar_resnet20", num_classes=10), input_size=(3, 16, 16),
                                   selection="sapp", block_size=4)
    for g in supernet.groups().values():  # a scattered ranking, as attention leaves it
        g.set_order(torch.randperm(g.channels, generator=torch.Generator().manual_seed(len(g.name))))
    arch = supernet.random_arch(torch.Generator().manual_seed(1))
    tables = _tables(arch_markdown(arch, supernet))
    assert set(tables["group"]) == set(arch.groups) and set(tables["stage"]) == set(arch.stages)
    for name, spec in arch.groups.items():
        original, kept, blocks = tables["group"][name]
        assert (int(original), int(kept)) == (spec["channels"], spec["width"])
        if supernet.groups()[name].attn_logits is None:  # a single candidate: nothing to select
            assert blocks == ""
            continue
        size = supernet.groups()[name].block_size
        expected = sorted({i // size for i in spec["indices"]})  # plain groups: block = channel // block size
        listed = []
        for part in blocks.split(" (")[0].split(", "):
            lo, _, hi = part.partition("–")
            listed += range(int(lo), int(hi or lo) + 1)
        assert listed == expected, name


# -- the runs' event files -----------------------------------------------------------------------
def test_search_figures_one_row_per_group_and_stage_and_a_final_step(runs):
    arch = Arch.from_json(runs / "search" / "arch.json")
    metrics = json.loads((runs / "search" / "metrics.json").read_text())
    acc = _accumulator(runs / "search")
    width, depth = acc.Images("width_probs"), acc.Images("depth_probs")
    steps_per_epoch = metrics["steps"] // 2
    final = metrics["steps"] + 1
    assert [e.step for e in width] == [e.step for e in depth] == [steps_per_epoch, 2 * steps_per_epoch, final]
    rows_w, rows_d = len(arch.groups), len(arch.stages)
    assert (width[-1].height - depth[-1].height) == pytest.approx((rows_w - rows_d) * ROW_PX, abs=1)
    assert width[-1].encoded_image_string.startswith(b"\x89PNG")


def test_search_final_arch_text_is_arch_json(runs):
    arch = Arch.from_json(runs / "search" / "arch.json")
    acc = _accumulator(runs / "search")
    events = acc.Tensors("arch/text_summary")
    final = events[-1]
    assert final.step == json.loads((runs / "search" / "metrics.json").read_text())["steps"] + 1
    tables = _tables(final.tensor_proto.string_val[0].decode())
    assert tables["group"] == {n: (str(g["channels"]), str(g["width"])) for n, g in arch.groups.items()}
    assert tables["stage"] == {n: (str(s["blocks"]), str(s["depth"])) for n, s in arch.stages.items()}


def test_search_val_top1_is_a_fraction_per_epoch(runs):
    history = json.loads((runs / "search" / "arch_history.json").read_text())
    acc = _accumulator(runs / "search")
    assert [e.value for e in acc.Scalars("search/val_top1")] == pytest.approx([h["top1"] / 100 for h in history])


def _migrated_histograms(run, prefix):
    """``{tag: [[left, right, count], ...]}`` of the last histogram of each tag under ``prefix``, as
    TensorBoard's histogram plugin reads it (its loader migrates the raw histograms to buckets)."""
    out = {}
    for path in sorted(run.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                if v.tag.startswith(prefix):
                    out[v.tag] = tensor_util.make_ndarray(v.tensor).tolist()
    return out


def test_search_histograms_have_a_bucket_per_candidate(runs, teacher_run):
    from tas.prune.load import load_run

    teacher, config = load_run(teacher_run)
    supernet = tas.create_supernet(teacher, input_size=config["input_size"], model_name=config["model"])
    width = _migrated_histograms(runs / "search", "width/")
    depth = _migrated_histograms(runs / "search", "depth/")
    searched = {n: g.widths for n, g in supernet.groups().items() if len(g.widths) > 1}
    assert set(width) == {f"width/{n}" for n in searched} and depth
    cands = {**{f"width/{n}": w for n, w in searched.items()},
             **{f"depth/{n}": d for n, d in supernet.stage_depths.items() if len(d) > 1}}
    for tag, buckets in {**width, **depth}.items():
        assert len(buckets) == len(cands[tag]), tag
        for (left, right, _), c in zip(buckets, cands[tag]):
            assert left < c < right, (tag, c, left, right)
        assert sum(b[2] for b in buckets) == pytest.approx(1.0)


def test_search_custom_scalars_budget_and_losses(runs):
    acc = _accumulator(runs / "search")
    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    budget = next(tags for title, tags in charts.items() if title.startswith("budget"))
    scalars = acc.Tags()["scalars"]
    matched = {t for rx in budget for t in scalars if re.search(rx, t)}
    assert matched == {"search/target_ratio", "search/band_low", "search/expected_ratio", "search/derived_ratio"}
    band = acc.Scalars("search/band_low")[-1].value
    assert band == pytest.approx(0.5 - 0.05)
    losses = next(tags for title, tags in charts.items() if title.startswith("losses"))
    assert {t for rx in losses for t in scalars if re.search(rx, t)} >= {"search/weight_loss", "search/arch_ce"}


def _session(acc):
    start = hp_metadata.parse_session_start_info_plugin_data(
        acc.SummaryMetadata(hp_metadata.SESSION_START_INFO_TAG).plugin_data.content)
    values = {k: (v.string_value if v.HasField("string_value") else v.number_value) for k, v in start.hparams.items()}
    experiment = hp_metadata.parse_experiment_plugin_data(
        acc.SummaryMetadata(hp_metadata.EXPERIMENT_TAG).plugin_data.content)
    results = {t.split("/", 1)[1]: acc.Scalars(t)[-1].value for t in acc.Tags()["scalars"] if t.startswith("hparams/")}
    return values, experiment, results


def test_search_hparams_session(runs):
    arch = Arch.from_json(runs / "search" / "arch.json")
    metrics = json.loads((runs / "search" / "metrics.json").read_text())
    values, experiment, results = _session(_accumulator(runs / "search"))
    assert values["stage"] == "search" and values["selection"] == "prefix" and values["metric"] == "flops"
    assert values["ratio"] == pytest.approx(0.5) and values["epochs"] == 2 and values["k"] == 2
    declared = {m.name.tag for m in experiment.metric_infos}
    assert {f"hparams/{k}" for k in results} <= declared
    assert results["flops_ratio"] == pytest.approx(arch.flops / arch.full_flops)
    assert results["params_ratio"] == pytest.approx(arch.params / arch.full_params)
    assert results["decode_moves"] == metrics["projection_steps"]
    assert results["top1_hard_mode"] == pytest.approx(metrics["top1_hard_mode"])
    assert results["pre_decode_ratio"] == pytest.approx(metrics["pre_decode_ratio"])
    history = json.loads((runs / "search" / "arch_history.json").read_text())
    if metrics["projection_steps"] == 0:  # no move: the decode kept the last argmax
        assert metrics["pre_decode_ratio"] == pytest.approx(history[-1]["flops_ratio"])


def test_search_graph_is_the_slim_network(runs):
    acc = _accumulator(runs / "search")
    graph = acc.Graph()
    convs = [n for n in graph.node if n.op == "aten::_convolution"]
    slim = tas.load_slim(runs / "search")
    assert len(convs) == sum(isinstance(m, torch.nn.Conv2d) for m in slim.modules())


def test_distillation_hparams_session(runs):
    arch = Arch.from_json(runs / "search" / "arch.json")
    metrics = json.loads((runs / "slim" / "metrics.json").read_text())
    values, _, results = _session(_accumulator(runs / "slim"))
    assert values["stage"] == "distill" and values["init"] == "inherit" and values["ratio"] == pytest.approx(0.5)
    assert results["top1"] == pytest.approx(metrics["top1"])
    assert results["flops_ratio"] == pytest.approx(arch.flops_ratio)
    assert math.isclose(values["kd_alpha"], 0.9)
