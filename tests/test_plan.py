"""PruningPlan: JSON round trip, validation errors that name the group and tensor, counts."""

from __future__ import annotations

import json

import pytest

from onnxprune.deps import analyze
from onnxprune.errors import PlanError
from onnxprune.model import load_model
from onnxprune.plan import PruningPlan, kept_counts, model_sha256
from tests.corpus.fixtures import corpus_model  # noqa: F401  (pytest fixture)


@pytest.fixture(scope="module")
def resnext(corpus_model):  # noqa: F811
    return analyze(load_model(corpus_model("resnext")))


@pytest.fixture(scope="module")
def tf_flatten(corpus_model):  # noqa: F811
    return analyze(load_model(corpus_model("tf_nhwc_flatten")))


def _first_tensor(analysis, group_id):
    return analysis.group(group_id).members[0].tensor


def test_round_trip_through_json(tf_flatten, tmp_path):
    groups = tf_flatten.prunable_groups()
    keep = {groups[0].id: [5, 1, 2], groups[2].id: list(range(0, 16, 3))}
    plan = PruningPlan.from_keep(tf_flatten, keep, meta={"criterion": "l1"})
    assert plan.keep[groups[0].id] == [1, 2, 5]  # sorted
    path = plan.save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    assert data["format"] == "onnxprune-plan/1"
    assert data["model_sha256"] == model_sha256(tf_flatten.model)
    entry = data["groups"][0]
    assert entry == {
        "id": groups[0].id,
        "channels": 8,
        "kept": 3,
        "tensors": entry["tensors"],
        "tensor_count": len(tf_flatten.group(groups[0].id).members),
        "keep": [1, 2, 5],
    }
    assert 1 <= len(entry["tensors"]) <= 4
    # one line per group: the keep list is on the line of its group id
    line = next(t for t in path.read_text().splitlines() if f'"id": {groups[0].id},' in t)
    assert line.rstrip(",").endswith('"keep": [1, 2, 5]}')
    assert _first_tensor(tf_flatten, groups[0].id) == entry["tensors"][0]
    loaded = PruningPlan.load(path, tf_flatten)
    assert loaded.keep == plan.keep
    assert loaded.meta == {"criterion": "l1"}
    assert "keep     3 / 8" in str(loaded)


def test_an_edited_plan_loads(tf_flatten, tmp_path):
    group = tf_flatten.prunable_groups()[1]
    path = PruningPlan.from_keep(tf_flatten, {group.id: [0, 1]}).save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    data["groups"][0]["keep"] = [7, 3]
    del data["groups"][0]["tensors"]
    path.write_text(json.dumps(data))
    assert PruningPlan.load(path, tf_flatten).keep == {group.id: [3, 7]}


def test_kept_counts_cover_every_group(tf_flatten):
    sizes = tf_flatten.group_sizes()
    group = tf_flatten.prunable_groups()[2]
    plan = PruningPlan.from_keep(tf_flatten, {group.id: [0, 4, 9]})
    counts = kept_counts(plan, tf_flatten)
    assert counts == {**sizes, group.id: 3}


def _write(tmp_path, analysis, groups):
    data = {"model_sha256": model_sha256(analysis.model), "groups": groups}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("make_keep", "message"),
    [
        (lambda g: [0, g.size], r"keep index {size} out of range 0\.\.{last}"),
        (lambda g: [1, 1, 2], "lists keep index 1 twice"),
        (lambda g: [], "keeps zero channels"),
    ],
)
def test_invalid_keep_lists_name_group_and_tensor(tf_flatten, tmp_path, make_keep, message):
    group = tf_flatten.prunable_groups()[0]
    path = _write(tmp_path, tf_flatten, [{"id": group.id, "keep": make_keep(group)}])
    expected = message.format(size=group.size, last=group.size - 1)
    with pytest.raises(PlanError, match=expected) as info:
        PruningPlan.load(path, tf_flatten)
    text = str(info.value)
    assert f"group {group.id}" in text
    assert _first_tensor(tf_flatten, group.id) in text
    assert str(path) in text


def test_unknown_group(tf_flatten, tmp_path):
    path = _write(tmp_path, tf_flatten, [{"id": 99, "keep": [0], "tensors": ["conv9_out"]}])
    with pytest.raises(PlanError, match=r"group 99 \(tensor 'conv9_out'\) does not exist"):
        PruningPlan.load(path, tf_flatten)


def test_frozen_group_cannot_lose_channels(tf_flatten, tmp_path):
    frozen = next(g for g in tf_flatten.groups if not g.prunable)
    path = _write(tmp_path, tf_flatten, [{"id": frozen.id, "keep": [0, 1]}])
    with pytest.raises(
        PlanError, match=r"is frozen \(channels reach the graph output 'Identity:0'\)"
    ):
        PruningPlan.load(path, tf_flatten)
    # Listing a frozen group with all its channels is harmless.
    path = _write(tmp_path, tf_flatten, [{"id": frozen.id, "keep": list(range(frozen.size))}])
    assert PruningPlan.load(path, tf_flatten).keep[frozen.id] == list(range(frozen.size))


def test_grouped_conv_blocks_must_keep_equal_counts(resnext):
    grouped = next(g for g in resnext.prunable_groups() if g.block_count == 4)
    assert grouped.size == 16
    # blocks of 4 channels: keeps 2, 1, 1, 1 -> refused
    with pytest.raises(PlanError, match=r"4 equal blocks of 4 .* keeps \[2, 1, 1, 1\]"):
        PruningPlan.from_keep(resnext, {grouped.id: [0, 1, 4, 8, 12]})
    plan = PruningPlan.from_keep(resnext, {grouped.id: [0, 5, 10, 15]})
    assert kept_counts(plan, resnext)[grouped.id] == 4


def test_plan_for_another_model_is_refused(tf_flatten, resnext, tmp_path):
    group = resnext.prunable_groups()[0]
    path = PruningPlan.from_keep(resnext, {group.id: [0]}).save(tmp_path / "resnext.json")
    with pytest.raises(PlanError, match="was made for another model"):
        PruningPlan.load(path, tf_flatten)


def test_unreadable_plan_files(tf_flatten, tmp_path):
    with pytest.raises(PlanError, match="missing.json' does not exist"):
        PruningPlan.load(tmp_path / "missing.json", tf_flatten)
    broken = tmp_path / "broken.json"
    broken.write_text('{"groups": [')
    with pytest.raises(PlanError, match="broken.json' is not readable JSON"):
        PruningPlan.load(broken, tf_flatten)
    broken.write_text('{"groups": [{"id": 0}]}')
    with pytest.raises(PlanError, match=r"groups\[0\] needs an 'id' and a 'keep' list"):
        PruningPlan.load(broken, tf_flatten)


def test_to_dict_and_str_of_full_plan(tf_flatten):
    plan = PruningPlan.full(tf_flatten)
    assert plan.to_dict()["groups"] == []
    assert kept_counts(plan, tf_flatten) == tf_flatten.group_sizes()
    assert str(plan).startswith(f"PruningPlan for model {plan.model_sha[:12]} (0 groups listed)")


# Strict plans (issue 15): what used to be coerced silently or crash is one clear PlanError.
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d, g: g.update(keep="123"), r"groups\[0\]\.keep must be a list"),
        (
            lambda d, g: g.update(keep=[0, 3.9]),
            r"groups\[0\]\.keep\[1\] must be an integer, got 3\.9",
        ),
        (lambda d, g: g.update(keep=[True, 2]), r"keep\[0\] must be an integer, got True"),
        (lambda d, g: g.update(keep=["1"]), r"keep\[0\] must be an integer, got '1'"),
        (lambda d, g: g.update(id="0"), r"groups\[0\]\.id must be an integer"),
        (lambda d, g: g.update(channels=8.0), r"groups\[0\]\.channels must be an integer"),
        (lambda d, g: g.update(tensors="a"), r"groups\[0\]\.tensors must be a list"),
        (lambda d, g: g.update(kep=[1]), r"groups\[0\] has unknown key\(s\) kep"),
        (lambda d, g: d.update(meta=[1, 2]), r"'meta' must be an object, got \[1, 2\]"),
        (lambda d, g: d.update(format="onnxprune-plan/0"), r"has format 'onnxprune-plan/0'"),
        (lambda d, g: d.update(model_sha256=5), r"'model_sha256' must be a string"),
        (lambda d, g: d.update(group=[]), r"has unknown key\(s\) group"),
    ],
)
def test_plan_fields_are_never_coerced(tf_flatten, tmp_path, edit, message):
    group = next(g for g in tf_flatten.groups if g.prunable)
    entry = {"id": group.id, "keep": [0, 1]}
    data = {"format": "onnxprune-plan/1", "model_sha256": model_sha256(tf_flatten.model)}
    data["groups"] = [entry]
    edit(data, entry)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=message) as info:
        PruningPlan.load(path, tf_flatten)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_infinity_and_deep_nesting_are_clear_errors(tf_flatten, tmp_path):
    group = next(g for g in tf_flatten.groups if g.prunable)
    path = tmp_path / "inf.json"
    path.write_text(f'{{"groups": [{{"id": {group.id}, "keep": [0, Infinity]}}]}}')
    with pytest.raises(PlanError, match=r"keep\[1\] must be an integer, got inf"):
        PruningPlan.load(path, tf_flatten)
    path.write_text('{"groups": [], "meta": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(PlanError, match="nested too deeply|not readable JSON"):
        PruningPlan.load(path, tf_flatten)
