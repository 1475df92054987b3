"""Latency budget: the lookup table (keyed, cached, shared rows), the latency wall, plans
under --latency (with --flops), verification with re-pick, and the error for an impossible
latency. Every timing here is a fake: a deterministic function of the variant's MACs (no
test times anything)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune.budget import ChannelRounding
from onnxprune.cli import main
from onnxprune.cli.common import run_guarded
from onnxprune.cost import model_cost
from onnxprune.data import Dataset
from onnxprune.deps import analyze
from onnxprune.env import ActionGroup, PruningEnv
from onnxprune.errors import OnnxPruneError, PlanError
from onnxprune.evaluate import make_session, predict
from onnxprune.latency import GroupTiming, LatencyPredictor, LatencyTable, latency_table
from onnxprune.latency.cache import model_latency_table
from onnxprune.latency.steps import StepRounding, step_rounding
from onnxprune.latency.table import monotone_savings
from onnxprune.model import fix_input_shapes
from onnxprune.pipeline import SpeedOptions, prune_model
from onnxprune.search import run_search
from onnxprune.search.latency import TIGHTEN_MARGIN, Measurement
from tests.conftest import finish_model, make_tiny_cnn
from tests.test_env import WIDTHS as CHAIN_WIDTHS
from tests.test_env import _plan_cost

MS_PER_MAC = 1e-6
FIXED_MS = 0.5


class MacsTimer:
    """Fake timer: a model takes ``FIXED_MS + MS_PER_MAC * MACs``; counts its calls."""

    rounds = 7

    def __init__(self, model: onnx.ModelProto) -> None:
        self.full_macs = model_cost(model).macs
        self.calls = 0

    def base_ms(self) -> float:
        return FIXED_MS + MS_PER_MAC * self.full_macs

    def saved_ms(self, variant: onnx.ModelProto) -> float:
        self.calls += 1
        return MS_PER_MAC * (self.full_macs - model_cost(variant).macs)


def _chain_model(widths: tuple[int, ...], image: int = 8) -> onnx.ModelProto:
    """Conv chain 3 -> w0 -> w1 ... (3x3, pad 1) -> GAP -> Flatten -> Gemm(10), batch 1."""
    rng = np.random.default_rng(0)
    nodes, inits, prev, c_in = [], [], "input", 3
    for i, width in enumerate(widths):
        weight = rng.normal(0, 0.2, (width, c_in, 3, 3)).astype(np.float32)
        inits.append(onnx.numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(
            onnx.helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], f"conv{i}", pads=[1] * 4)
        )
        nodes.append(onnx.helper.make_node("Relu", [f"c{i}"], [f"r{i}"], f"relu{i}"))
        prev, c_in = f"r{i}", width
    fc = rng.normal(0, 0.2, (10, c_in)).astype(np.float32)
    inits.append(onnx.numpy_helper.from_array(fc, "fc"))
    nodes += [
        onnx.helper.make_node("GlobalAveragePool", [prev], ["gap"], "gap"),
        onnx.helper.make_node("Flatten", ["gap"], ["flat"], "flatten"),
        onnx.helper.make_node("Gemm", ["flat", "fc"], ["logits"], "gemm", transB=1),
    ]
    inputs = [onnx.helper.make_tensor_value_info("input", 1, [1, 3, image, image])]
    outputs = [onnx.helper.make_tensor_value_info("logits", 1, [1, 10])]
    return finish_model(nodes, inputs, outputs, inits, "chain")


def _analysis_and_rounding(model: onnx.ModelProto, round_to: int = 4, min_channels: int = 4):
    analysis = analyze(model)
    rounding = ChannelRounding(analysis.prunable_groups(), round_to, min_channels)
    return analysis, rounding


# ------------------------------------------------------------------------------ the table


def test_table_rows_time_each_class_of_equal_groups_together() -> None:
    model = _chain_model((16, 16, 16, 16, 16))
    analysis, rounding = _analysis_and_rounding(model)
    timer = MacsTimer(analysis.model)
    table = latency_table(analysis, rounding, timer=timer, show_progress=False, use_cache=False)
    rows = {row.group_id: row for row in table.groups}
    assert len(rows) == 5 and all(row.widths == [4, 8, 12, 16] for row in rows.values())
    # groups 1, 2, 3 sit between two identical 16 -> 16 convs at 8x8: one class, one row;
    # group 0 (after the 3 -> 16 input conv) and 4 (feeds the Gemm) differ
    assert [g for g, row in rows.items() if row.timed] == [0, 1, 4]
    assert rows[2].saved_ms == rows[3].saved_ms == rows[1].saved_ms
    # 3 classes x 3 widths, plus the 2 calibration plans (every group at 4, every group at 8)
    assert timer.calls == 3 * 3 + 2 == table.variants_timed
    # the class is timed with all three groups at w: conv1 loses (16 - w) * 16 output rows,
    # conv2 and conv3 keep w * w of 16 * 16, conv4 loses (16 - w) * 16 input columns
    for width, saved in zip(rows[1].widths, rows[1].saved_ms, strict=True):
        removed = (2 * 16 * (16 - width) + 2 * (256 - width * width)) * 9 * 64
        assert saved == pytest.approx(MS_PER_MAC * removed / 3)
    assert table.base_ms == pytest.approx(FIXED_MS + MS_PER_MAC * model_cost(model).macs)
    # calibration: the rows' sum misses the interactions of neighbouring classes; the curve
    # runs through (0, 0) and the (summed, measured) savings of the two all-group plans
    full = model_cost(model).macs
    points = []
    for width in (8, 4):  # every group at half its size, every group at the floor
        summed = sum(rows[g].saved(width) for g in range(5))
        measured = MS_PER_MAC * (full - model_cost(_chain_model((width,) * 5)).macs)
        points.append((summed, measured))
    floors_first = sorted(points, key=lambda p: -p[0])
    assert [v for c in table.calibration for v in (c["summed_ms"], c["measured_ms"])] == (
        pytest.approx([v for point in floors_first for v in point])
    )
    (half_sum, half_measured), (floor_sum, floor_measured) = points
    assert floor_measured < floor_sum and table.scale == pytest.approx(floor_measured / floor_sum)
    # both anchor plans are predicted exactly; in between the curve is linear
    assert table.predict_ms({g: 4 for g in range(5)}) == pytest.approx(
        table.base_ms - floor_measured
    )
    assert table.predict_ms({g: 8 for g in range(5)}) == pytest.approx(
        table.base_ms - half_measured
    )
    kept = {1: 8, 2: 8, 3: 8}
    summed = 3 * rows[1].saved(8)
    assert summed < half_sum
    assert table.predict_ms(kept) == pytest.approx(
        table.base_ms - summed * half_measured / half_sum
    )


def test_table_is_cached_by_key_and_a_changed_key_misses() -> None:
    model = _chain_model((16, 8, 16))
    analysis, rounding = _analysis_and_rounding(model)
    first_timer = MacsTimer(analysis.model)
    first = latency_table(analysis, rounding, timer=first_timer, show_progress=False)
    # 3 + 1 + 3 widths, plus 2 calibration plans (all at the floor, all at half)
    assert not first.cached and first_timer.calls == first.variants_timed == 3 + 1 + 3 + 2
    assert Path(first.path).is_file()

    again_timer = MacsTimer(analysis.model)
    again = latency_table(analysis, rounding, timer=again_timer, show_progress=False)
    assert again.cached and again_timer.calls == 0 and again.path == first.path
    for cached_row, built_row in zip(again.groups, first.groups, strict=True):
        assert cached_row.saved_ms == pytest.approx(built_row.saved_ms, abs=1e-5)  # 5 decimals

    for changed in ({"batch": 2}, {"threads": 2}):
        timer = MacsTimer(analysis.model)
        table = latency_table(analysis, rounding, timer=timer, show_progress=False, **changed)
        assert not table.cached and timer.calls == 9 and table.path != first.path
        assert table.key[next(iter(changed))] == next(iter(changed.values()))
    coarser = ChannelRounding(analysis.prunable_groups(), 8, 8)
    timer = MacsTimer(analysis.model)
    table = latency_table(analysis, coarser, timer=timer, show_progress=False)
    # widths 8 (16-ch groups) only; floors and halves are one plan: one calibration
    assert not table.cached and timer.calls == 1 + 0 + 1 + 1
    other_model = _analysis_and_rounding(_chain_model((16, 8, 24)))
    assert latency_table(*other_model, timer=MacsTimer(other_model[0].model),
                         show_progress=False).path != first.path  # fmt: skip


def test_table_json_round_trip_and_damaged_cache_file_is_rebuilt() -> None:
    model = _chain_model((16, 8))
    analysis, rounding = _analysis_and_rounding(model)
    table = latency_table(analysis, rounding, timer=MacsTimer(analysis.model), show_progress=False)
    restored = LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert restored.predict_ms({0: 4, 1: 4}) == pytest.approx(
        table.predict_ms({0: 4, 1: 4}), abs=3e-5
    )
    Path(table.path).write_text("{not json")
    timer = MacsTimer(analysis.model)
    rebuilt = latency_table(analysis, rounding, timer=timer, show_progress=False)
    assert not rebuilt.cached and timer.calls == rebuilt.variants_timed == 3 + 1 + 2


def test_monotone_savings_and_latency_steps() -> None:
    # measured noise: a narrower width that seems to save less is pooled with the wider one
    # (isotonic least squares: averaged, not lifted to the maximum); the full width saves 0
    assert monotone_savings([0.30, 0.35, 0.10, 0.12, -0.01]) == pytest.approx(
        [0.325, 0.325, 0.11, 0.11, 0.0]
    )
    assert monotone_savings([0.0, 0.05, -0.02, 0.01, 0.3]) == pytest.approx(
        [0.025, 0.025, 0.0, 0.0, 0.0]
    )
    row = GroupTiming(7, 64, [8, 16, 24, 32, 40, 48, 56, 64],
                      [0.9, 0.9, 0.6, 0.6, 0.3, 0.3, 0.0, 0.0])  # fmt: skip
    table = LatencyTable({"batch": 1}, 10.0, [row])
    # 56 costs what 64 costs, 40 what 48 costs ...: only the widest of each step is offered
    assert table.step_widths(7) == [16, 32, 48, 64]
    rounding = step_rounding(ChannelRounding([ActionGroup(7, 64)], 8, 8), table)
    assert isinstance(rounding, StepRounding) and rounding.lows.tolist() == [16]
    counts = [int(rounding.counts(np.array([k]))[0]) for k in np.linspace(0, 1, 41)]
    assert set(counts) == {16, 32, 48, 64} and counts == sorted(counts)
    assert rounding.grown(0, 16) == 32 and rounding.grown(0, 48) == 64
    assert rounding.grown(0, 64) == 64


def test_impossible_latency_names_the_smallest_reachable_ratio() -> None:
    rows = [GroupTiming(0, 16, [4, 8, 16], [2.0, 1.0, 0.0]),
            GroupTiming(1, 32, [8, 32], [1.0, 0.0])]  # fmt: skip
    predictor = LatencyPredictor(LatencyTable({}, 10.0, rows), [0, 1])
    predictor.require(0.7, np.array([4, 8]))  # exactly the fixed part: reachable
    with pytest.raises(PlanError) as info:
        predictor.require(0.5, np.array([4, 8]))
    message = str(info.value)
    assert "--latency 0.5 is out of reach" in message
    assert "smallest reachable ratio is 0.7000" in message and "--latency >= 0.700" in message


# ------------------------------------------------------------------------- the latency wall


def _synthetic_table(savings: list[list[float]], round_to: int) -> tuple[LatencyTable, Any]:
    groups = [ActionGroup(i, w) for i, w in enumerate(CHAIN_WIDTHS)]
    rounding = ChannelRounding(groups, round_to, 1)
    rows = []
    for i, group in enumerate(groups):
        widths = sorted({int(w) for w in np.arange(rounding.lows[i], group.size,
                                                   rounding.units[i])} | {group.size})  # fmt: skip
        draws = [savings[i][j % len(savings[i])] for j in range(len(widths))]
        # savings grow as the width shrinks (sorted descending), 0 at the full width
        rows.append(GroupTiming(group.id, group.size, widths,
                                monotone_savings(sorted(draws, reverse=True))))  # fmt: skip
    return LatencyTable({}, 10.0, rows), groups


@settings(max_examples=60, deadline=None)
@given(
    savings=st.lists(st.lists(st.floats(0.0, 2.0), min_size=1, max_size=6), min_size=4,
                     max_size=4),
    actions=st.lists(st.lists(st.floats(0, 1), min_size=4, max_size=4), min_size=3, max_size=3),
    share=st.floats(0.0, 1.0),
    flops=st.sampled_from([1.0, 0.6]),
    steps=st.integers(1, 3),
    round_to=st.sampled_from([1, 4, 8]),
)  # fmt: skip
def test_latency_wall_always_ends_inside_the_predicted_budget(
    savings, actions, share, flops, steps, round_to
) -> None:
    table, groups = _synthetic_table(savings, round_to)
    predictor = LatencyPredictor(table, [g.id for g in groups])
    rounding = ChannelRounding(groups, round_to, 1)
    smallest = predictor.fraction(rounding.lows)
    target = smallest + share * (1.0 - smallest)
    try:
        env = PruningEnv(groups, _plan_cost(), lambda kept: 0.0, flops, steps_per_episode=steps,
                         round_to=round_to, latency=predictor, latency_target=target)  # fmt: skip
    except PlanError:
        assert flops < 1.0  # the MACs budget alone may be unreachable at coarse rounding
        return
    env.reset()
    for action in actions[:steps]:
        result = env.step(np.array(action))
        if result.done:
            break
    assert result.done
    counts = np.array([result.kept[g.id] for g in groups])
    assert predictor.fraction(counts) <= target + 1e-9
    assert result.macs_fraction <= flops + 1e-12


# ------------------------------------------------------------------- prune --latency/--flops


def _speed(model: onnx.ModelProto, latency: float | None, scope: str = "auto") -> SpeedOptions:
    return SpeedOptions(latency=latency, scope=scope, timer=MacsTimer(model), show_progress=False)


def test_prune_latency_alone_and_with_flops_meet_both_budgets() -> None:
    model = _chain_model((16, 24, 32, 16))
    table_model = analyze(model).model
    alone = prune_model(model, speed=_speed(table_model, 0.6), round_to=4, min_channels=4)
    meta = alone.plan.meta
    assert meta["predicted_latency_ratio"] <= 0.6 and meta["latency_target"] == 0.6
    # the fake latency is FIXED_MS + MACs: the measured ratio of the result follows
    real = (FIXED_MS + MS_PER_MAC * alone.pruned_cost.macs) / (
        FIXED_MS + MS_PER_MAC * alone.original_cost.macs
    )
    assert real <= 0.6 + 0.05  # additivity error of neighbouring groups, bounded here
    both = prune_model(model, flops=0.4, speed=_speed(table_model, 0.6), round_to=4,
                       min_channels=4)  # fmt: skip
    assert both.pruned_cost.macs <= 0.4 * both.original_cost.macs
    assert both.plan.meta["predicted_latency_ratio"] <= 0.6
    assert both.plan.meta["macs_fraction"] == pytest.approx(
        both.pruned_cost.macs / both.original_cost.macs, abs=1e-6
    )
    assert any("plan: pruned" in note for note in both.notes)
    # a chain has no residual-tied group: one candidate, and the note says why
    assert alone.plan.meta["plan_choice"]["reason"] == (
        "pruned all groups (no group is tied across a residual Add: interiors are all groups)"
    )


def test_prune_impossible_latency_is_one_clear_error() -> None:
    model = _chain_model((16, 24))
    with pytest.raises(PlanError, match=r"smallest reachable ratio is 0\.\d{4}"):
        prune_model(model, speed=_speed(analyze(model).model, 0.01), round_to=4, min_channels=4)
    with pytest.raises(OnnxPruneError, match="--latency 1.5 must be a fraction"):
        prune_model(model, speed=_speed(model, 1.5))


def _residual_model() -> onnx.ModelProto:
    """x -> conv a (3->16) -> [conv b (16->16) -> relu -> conv c (16->16)] + a -> GAP -> Gemm:
    one residual group (a, c tied by the Add) and one block interior (b)."""
    rng = np.random.default_rng(1)

    def weight(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return onnx.numpy_helper.from_array(rng.normal(0, 0.2, shape).astype(np.float32), name)

    make = onnx.helper.make_node
    nodes = [
        make("Conv", ["input", "wa"], ["a"], "conv_a", pads=[1] * 4),
        make("Conv", ["a", "wb"], ["b"], "conv_b", pads=[1] * 4),
        make("Relu", ["b"], ["rb"], "relu_b"),
        make("Conv", ["rb", "wc"], ["c"], "conv_c", pads=[1] * 4),
        make("Add", ["a", "c"], ["s"], "add"),
        make("GlobalAveragePool", ["s"], ["gap"], "gap"),
        make("Flatten", ["gap"], ["flat"], "flatten"),
        make("Gemm", ["flat", "fc"], ["logits"], "gemm", transB=1),
    ]
    inits = [weight("wa", (16, 3, 3, 3)), weight("wb", (16, 16, 3, 3)),
             weight("wc", (16, 16, 3, 3)), weight("fc", (10, 16))]  # fmt: skip
    inputs = [onnx.helper.make_tensor_value_info("input", 1, [1, 3, 8, 8])]
    outputs = [onnx.helper.make_tensor_value_info("logits", 1, [1, 10])]
    return finish_model(nodes, inputs, outputs, inits, "residual")


class InteriorFastTimer(MacsTimer):
    """Fake timer where pruning the residual group saves a tenth of its MACs' time (e.g.
    memory-bound Adds and layout changes eat the rest)."""

    def saved_ms(self, variant: onnx.ModelProto) -> float:
        self.calls += 1
        shapes = {i.name: i.dims for i in variant.graph.initializer}
        share = 0.1 if shapes["wa"][0] < 16 else 1.0
        return share * MS_PER_MAC * (self.full_macs - model_cost(variant).macs)


def test_auto_plan_scope_picks_the_plan_the_table_predicts_faster() -> None:
    model = _residual_model()
    normalised = analyze(model).model
    speed = SpeedOptions(scope="auto", timer=InteriorFastTimer(normalised), show_progress=False)
    # with --flops alone a table is used only when cached: build it first (bench's path)
    model_latency_table(model, round_to=4, min_channels=4, timer=speed.timer,
                        show_progress=False)  # fmt: skip
    result = prune_model(model, flops=0.7, speed=speed, round_to=4, min_channels=4)
    choice = result.plan.meta["plan_choice"]
    assert choice["scope"] == "interiors"
    assert [c["scope"] for c in choice["candidates"]] == ["all", "interiors"]
    assert "predicted faster at the same MACs budget" in choice["reason"]
    all_row, interior_row = choice["candidates"]
    assert interior_row["predicted_latency_ratio"] < all_row["predicted_latency_ratio"]
    assert any(note.startswith("plan: pruned interiors groups") for note in result.notes)
    # --flops with --latency: the MACs budget binds both, so the faster plan wins again
    both = prune_model(
        model, flops=0.7, speed=SpeedOptions(latency=0.99, timer=speed.timer, show_progress=False),
        round_to=4, min_channels=4,
    )  # fmt: skip
    assert both.plan.meta["plan_choice"]["scope"] == "interiors"
    assert "predicted faster at the same MACs budget" in both.plan.meta["plan_choice"]["reason"]
    forced = prune_model(model, flops=0.7, speed=SpeedOptions(scope="all", timer=speed.timer,
                         show_progress=False), round_to=4, min_channels=4)  # fmt: skip
    assert forced.plan.meta["plan_choice"]["scope"] == "all"


def test_auto_without_a_table_prunes_all_groups_and_says_why() -> None:
    model = _residual_model()
    result = prune_model(model, flops=0.7, speed=SpeedOptions(show_progress=False), round_to=4,
                         min_channels=4)  # fmt: skip
    choice = result.plan.meta["plan_choice"]
    assert choice["scope"] == "all" and "no latency table" in choice["reason"]
    assert result.pruned_cost.macs <= 0.7 * result.original_cost.macs


# ---------------------------------------------------------------------------- CLI errors


def _invoke(*args: object) -> tuple[int, str, str]:
    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        code = run_guarded(main, [str(a) for a in args])
    return code, out.getvalue().decode(), err.getvalue().decode()


def test_cli_needs_a_budget_and_a_fraction(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save_model(make_tiny_cnn((16, 24)), str(path))
    code, _, err = _invoke("search", path, "--data", path, "-o", tmp_path / "out")
    assert code == 2 and "give a budget: --flops F" in err and "--latency F" in err
    code, _, err = _invoke("prune", path, "--latency", "1.5", "--input-shape", "1x3x16x16",
                           "-o", tmp_path / "x.onnx")  # fmt: skip
    assert code == 2 and "--latency 1.5 must be a fraction in (0, 1]" in err
    assert not (tmp_path / "x.onnx").exists()


# ------------------------------------------------------------------ search + verification


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dataset]:
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    onnx.save_model(make_tiny_cnn((16, 24)), str(path))
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (100, 3, 16, 16)).astype(np.float32)
    y = predict(make_session(path, device="cpu"), x).argmax(1).astype(np.int64)
    return path, Dataset(x, y, "tiny-data")


def _strategy(tmp_path: Path, steps: bool = False) -> Path:
    path = tmp_path / "random-test.toml"
    path.write_text(
        'agent = "random"\nepisodes = 5\nwarmup = 5\nround_to = 4\nmin_channels = 4\n'
        f"skip = []\nreward_samples = 50\nbatch_size = 64\nlatency_steps = {str(steps).lower()}\n"
    )
    return path


@dataclass
class FakeTiming:
    """``latency_timing`` for run_search: the MACs timer for the table and a measurement
    that misses by ``misses[i]`` x the prediction on call ``i`` (1.0 afterwards)."""

    lut_timer: MacsTimer
    misses: list[float]

    def __post_init__(self) -> None:
        self.calls: list[dict[int, int]] = []
        self.table: LatencyTable | None = None

    def measure(self, pruned: onnx.ModelProto, kept: dict[int, int]) -> Measurement:
        if self.table is None:  # the one table this test's search built (private cache)
            from onnxprune.latency.cache import cache_dir

            (path,) = cache_dir().glob("*.json")
            self.table = LatencyTable.from_dict(json.loads(path.read_text()))
        predicted = self.table.predict_ratio(kept)
        factor = self.misses[len(self.calls)] if len(self.calls) < len(self.misses) else 1.0
        self.calls.append(dict(kept))
        ratio = predicted * factor
        return Measurement(ratio, ratio - 0.01, ratio + 0.01, 1.0, ratio, [])


def _timing(model_path: Path, misses: list[float]) -> FakeTiming:
    model = fix_input_shapes(onnx.load(str(model_path)), {"input": [1, 3, 16, 16]})
    return FakeTiming(MacsTimer(analyze(model).model), misses)


def _search(tiny, tmp_path: Path, timing: FakeTiming, **kwargs):
    path, data = tiny
    strategy = _strategy(tmp_path, kwargs.pop("steps", False))
    return run_search(path, data, kwargs.pop("flops", None), strategy,
                      tmp_path / "out", show_progress=False, latency_runs=0,
                      latency_timing=timing, **kwargs)  # fmt: skip


def _expected_target(attempts: list[dict], budget: float) -> float:
    """The next predicted budget by hand: a secant between the slowest-predicted pass and
    the failing attempt just above it, else the one side's ratio, aimed at 0.98 budget."""
    aim = budget * TIGHTEN_MARGIN
    passing = [a for a in attempts if a["passed"]]
    lo = max(passing, key=lambda a: a["predicted"]) if passing else None
    above = [a for a in attempts if not a["passed"]
             and (lo is None or a["predicted"] > lo["predicted"])]  # fmt: skip
    hi = min(above, key=lambda a: a["predicted"]) if above else None
    if lo and hi:
        return lo["predicted"] + (aim - lo["measured"]) * (hi["predicted"] - lo["predicted"]) / (
            hi["measured"] - lo["measured"]
        )
    ref = hi or lo
    return ref["predicted"] * aim / ref["measured"]


def test_search_verification_fails_over_to_a_tighter_budget(tiny, tmp_path: Path) -> None:
    # the first pick misses by 5 %; the tightened re-pick passes, more than 5 % faster than
    # asked, so the budget is loosened again by a secant between the two measured plans
    timing = _timing(tiny[0], [1.05])
    result = _search(tiny, tmp_path, timing, latency=0.7)
    record = result.latency
    first, second, third = record["attempts"]
    assert not first["passed"]
    assert first["measured"] == pytest.approx(1.05 * first["predicted"], rel=1e-5)
    assert first["predicted"] <= 0.7 + 1e-9 and first["predicted_target"] == 0.7
    tightened = first["predicted"] * 0.7 / first["measured"] * TIGHTEN_MARGIN
    assert second["predicted_target"] == pytest.approx(tightened)
    assert second["predicted"] <= tightened + 1e-9 and second["passed"]
    assert second["measured"] < 0.95 * 0.7  # far inside: loosened
    loosened = _expected_target([first, second], 0.7)
    assert second["predicted"] < loosened < first["predicted"]
    assert third["predicted_target"] == pytest.approx(loosened)
    assert second["predicted"] < third["predicted"] <= loosened + 1e-9 and third["passed"]
    assert record["repicks"] == 2 and record["passed"]
    assert record["prediction_error"] == pytest.approx((0.05 / 1.05 + 0.0 + 0.0) / 3)
    # kept: the best-rewarded plan that passed, the one closer to the budget on a tie
    passing = [a for a in record["attempts"] if a["passed"]]
    kept = max(passing, key=lambda a: (a["reward"], a["measured"]))
    assert [a["kept"] for a in record["attempts"]] == [a is kept for a in record["attempts"]]
    assert {
        int(k): v
        for k, v in json.loads((tmp_path / "out" / "report.json").read_text())["kept"].items()
    } == timing.calls[kept["attempt"]]
    assert any("tightened the predicted budget to" in n for n in result.notes)
    assert any("faster than asked; loosened the predicted budget to" in n for n in result.notes)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Latency budget" in md and "| 2 |" in md and "passed after 2 re-pick(s)" in md
    assert "**kept**" in md
    assert (tmp_path / "out" / "latency_table.png").is_file()
    # every episode ended inside the predicted budget (the wall)
    for episode in result.episodes:
        assert timing.table.predict_ratio(episode.kept) <= 0.7 + 1e-9


def _fake_verify(monkeypatch: pytest.MonkeyPatch, plans: dict, order: list[str]):
    """``verify_latency`` on a fake search: ``plans[name] = (kept, reward, predicted,
    measured)``; the pick is ``"A"`` and the re-picks return ``order`` in turn."""
    from types import SimpleNamespace

    from onnxprune.search import latency as lat
    from onnxprune.search.result import BestPlan

    names = iter(order)
    by_kept = {tuple(v[0].values()): v for v in plans.values()}
    measured: list[float] = []

    def repick(setup, pick, log, target, done):
        kept, reward = plans[next(names)][:2]
        return BestPlan(reward, 1, kept), "fake re-pick"

    def measure(pruned, kept):
        ratio = by_kept[tuple(kept.values())][3]
        measured.append(ratio)
        return lat.Measurement(ratio, ratio - 0.01, ratio + 0.01, 1.0, ratio)

    predictor = SimpleNamespace(kept_fraction=lambda kept: by_kept[tuple(kept.values())][2])
    budget = SimpleNamespace(target=0.7, predictor=predictor, measure=measure, attempts=[])
    env = SimpleNamespace(plan_key=lambda kept: tuple(kept.values()))
    setup = SimpleNamespace(latency_budget=budget, env=env, notes=[])
    monkeypatch.setattr(lat, "_repick", repick)
    monkeypatch.setattr(lat, "_cut", lambda setup, kept: None)
    chosen = lat.verify_latency(setup, BestPlan(plans["A"][1], 0, plans["A"][0]), [])
    return chosen, budget, setup.notes, measured


def test_verification_keeps_the_best_rewarded_plan_that_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # plan A (the pick, reward 3) misses; B (reward 2) passes far inside; the loosened C
    # (reward 1) passes too but is worse rewarded: B is kept and said so
    plans = {"A": ({0: 8}, 3.0, 0.60, 0.80), "B": ({0: 6}, 2.0, 0.45, 0.55),
             "C": ({0: 7}, 1.0, 0.50, 0.68)}  # fmt: skip
    chosen, budget, notes, measured = _fake_verify(monkeypatch, plans, ["B", "C"])
    assert measured == [0.80, 0.55, 0.68]
    assert chosen.kept == {0: 6} and chosen.reward == 2.0
    assert [a["kept"] for a in budget.attempts] == [False, True, False]
    assert any("kept attempt 1 (reward 2.0000, measured 0.550)" in n for n in notes)
    # the third attempt's budget is the secant between B (passed) and A (failed)
    assert budget.attempts[2]["predicted_target"] == pytest.approx(
        _expected_target(budget.attempts[:2], 0.7)
    )


def test_verification_stops_on_a_plan_measured_already_and_keeps_the_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # B passes far inside; the loosened C fails; the next re-pick is B again: the search
    # stops without measuring it twice, keeps B and warns of nothing
    plans = {"A": ({0: 8}, 3.0, 0.60, 0.80), "B": ({0: 6}, 2.0, 0.45, 0.55),
             "C": ({0: 7}, 2.5, 0.52, 0.75)}  # fmt: skip
    chosen, budget, notes, measured = _fake_verify(monkeypatch, plans, ["B", "C", "B"])
    assert measured == [0.80, 0.55, 0.75]
    assert chosen.kept == {0: 6} and [a["passed"] for a in budget.attempts] == [0, 1, 0]
    assert not any("WARNING" in n for n in notes)


def test_search_latency_with_flops_keeps_both(tiny, tmp_path: Path) -> None:
    timing = _timing(tiny[0], [])
    result = _search(tiny, tmp_path, timing, latency=0.8, flops=0.45, steps=True)
    assert result.pruned["macs"] <= 0.45 * result.original["macs"]
    # the fake measures the prediction: every attempt passes, and one far inside the budget
    # is loosened toward it (inside --flops); the kept plan is the best-rewarded one
    attempts = result.latency["attempts"]
    assert result.latency["passed"] and all(a["passed"] for a in attempts)
    assert attempts[0]["predicted"] <= 0.8 + 1e-9
    assert sum(a["kept"] for a in attempts) == 1
    assert max(attempts, key=lambda a: (a["reward"], a["measured"]))["kept"]
    assert result.latency["latency_steps"] is True
    for episode in result.episodes:
        assert episode.macs_fraction <= 0.45 + 1e-12
        assert timing.table.predict_ratio(episode.kept) <= 0.8 + 1e-9
        # the action space offered only the widths where the table's latency changes
        for group_id, count in episode.kept.items():
            assert count in timing.table.step_widths(group_id)


def test_search_impossible_latency_fails_before_writing(tiny, tmp_path: Path) -> None:
    timing = _timing(tiny[0], [])
    with pytest.raises(PlanError, match="smallest reachable ratio is"):
        _search(tiny, tmp_path, timing, latency=0.01)
    assert not (tmp_path / "out").exists()


def test_noisy_measurement_is_judged_by_the_fastest_runs() -> None:
    quiet = Measurement(0.62, 0.60, 0.64, 3.0, 1.86, [], 0.61)
    noisy = Measurement(0.91, 0.35, 1.90, 7.0, 6.4, ["load average 3.1 per core > 1.5"], 0.58)
    assert quiet.judged == 0.62 and noisy.judged == 0.58


def test_the_table_is_timed_at_the_requested_batch() -> None:
    from onnxprune.latency.build import SessionTimer, batched_shapes

    # the MACs are priced at batch 1; the timing feed takes the budget's batch
    assert batched_shapes({"input": [1, 3, 32, 32]}, 32) == {"input": [32, 3, 32, 32]}
    assert batched_shapes(None, 32) is None
    fixed = _chain_model((8,))  # input declared [1, 3, 8, 8]: a fixed batch of 1
    with pytest.raises(OnnxPruneError, match="fixed batch 1 input: .* --batch 32; use --batch 1"):
        SessionTimer(fixed, batch=32, input_shapes={"input": [1, 3, 8, 8]})


def test_bench_latency_table_prints_the_cached_table(tmp_path: Path) -> None:
    path = tmp_path / "chain.onnx"
    onnx.save_model(_chain_model((16, 8, 16)), str(path))
    timer = MacsTimer(analyze(_chain_model((16, 8, 16))).model)
    built = model_latency_table(path, round_to=8, min_channels=1, timer=timer,
                                show_progress=False)  # fmt: skip
    code, out, _ = _invoke("bench", path, "--latency-table", "--json")
    assert code == 0
    shown = json.loads(out)
    # widths 8 of the two 16-channel groups (the 8-channel group has only its full size),
    # one calibration plan
    assert shown["cached"] is True and shown["path"] == built.path and timer.calls == 3
    assert [g["saved_ms"] for g in shown["groups"]] == [
        g.to_dict()["saved_ms"] for g in built.groups
    ]
    code, out, _ = _invoke("bench", path, "--latency-table", "--plot", tmp_path / "t.png")
    assert code == 0 and (tmp_path / "t.png").is_file()
    first_row = f"    0 {16:>5}  8:{built.groups[0].saved_ms[0]:.3f}, 16:0.000"
    assert "latency table: full model" in out and "cached" in out and first_row in out


def test_a_shrunk_re_pick_is_filled_back_up_to_the_tighter_budget() -> None:
    # No evaluated plan inside the tightened prediction: the chosen plan is shrunk along the
    # wall (whole rounding steps for every group at once), then grown back while it fits, so
    # no group can take one more step without leaving the tighter budget.
    from types import SimpleNamespace

    from onnxprune.search.latency import _repick
    from onnxprune.search.result import BestPlan

    table, groups = _synthetic_table([[2.0, 1.0], [0.3], [0.2, 0.1], [0.05]], round_to=4)
    predictor = LatencyPredictor(table, [g.id for g in groups])
    env = PruningEnv(groups, _plan_cost(), lambda kept: 0.0, 1.0, round_to=4,
                     latency=predictor, latency_target=1.0)  # fmt: skip
    setup = SimpleNamespace(env=env, latency_budget=SimpleNamespace(predictor=predictor))
    full = {g.id: g.size for g in groups}
    target = 0.9
    best, how = _repick(setup, BestPlan(-1.0, 3, full), [], target, set())
    assert "moved along the wall and filled" in how
    counts = np.array([best.kept[g.id] for g in groups], dtype=np.float64)
    assert predictor.fraction(counts) <= target + 1e-9
    grown = 0
    for i, group in enumerate(groups):
        if counts[i] + 4 <= group.size:
            more = counts.copy()
            more[i] += 4
            assert predictor.fraction(more) > target + 1e-12, group.id
            grown += 1
    assert grown > 0
    # an evaluated plan inside the budget wins only when it is better rewarded than the
    # moved plan (reward 0.0 here), and never when it was measured already
    small = {g.id: 4 for g in groups}
    env.record(small, 1.0)
    assert _repick(setup, BestPlan(-1.0, 3, full), [], target, set())[0].kept == small
    measured = {env.plan_key(small)}
    assert _repick(setup, BestPlan(-1.0, 3, full), [], target, measured)[0].kept == best.kept
    env.record(small, -0.5)
    assert _repick(setup, BestPlan(-1.0, 3, full), [], target, set())[0].kept == best.kept
