"""The op vocabulary: every stage's registry names only ops of onnxprune.ops, and the stages
agree on the families (what the analysis propagates through, cost prices)."""

from __future__ import annotations

import itertools

import pytest

from onnxprune import cost, ops
from onnxprune.deps import HANDLERS as DEPS_HANDLERS
from onnxprune.deps import handlers as deps_handlers
from onnxprune.hgraph.level0 import _CATEGORY, OP_VOCAB
from onnxprune.recover.interpreter import supported_ops
from onnxprune.recover.interpreter.core import _TRAINABLE_SLOTS

_DERIVED = {
    name: value
    for name, value in vars(ops).items()
    if name.isupper() and isinstance(value, frozenset) and name not in ("ALL_OPS",)
}


def test_base_families_are_disjoint_and_make_up_all_ops():
    for (a, fa), (b, fb) in itertools.combinations(ops.BASE_FAMILIES.items(), 2):
        assert not fa & fb, f"{a} and {b} share {sorted(fa & fb)}"
    assert ops.ALL_OPS == frozenset().union(*ops.BASE_FAMILIES.values())
    assert sum(len(f) for f in ops.BASE_FAMILIES.values()) == len(ops.ALL_OPS)
    assert ops.family_of("Conv") == "conv"
    assert ops.family_of("Relu") == "unary"
    assert ops.family_of("Sum") == "variadic"
    assert ops.family_of("NoSuchOp") is None


@pytest.mark.parametrize("name", sorted(_DERIVED))
def test_every_family_only_names_known_ops(name):
    family = _DERIVED[name]
    assert family, name
    assert family <= ops.ALL_OPS, sorted(family - ops.ALL_OPS)


@pytest.mark.parametrize(
    ("registry", "names"),
    [
        ("deps", sorted(DEPS_HANDLERS)),
        ("cost", sorted(op for op in ops.ALL_OPS if cost.pricing_of(op) is not None)),
        ("interpreter", supported_ops()),
        ("hgraph", sorted(_CATEGORY)),
        ("interpreter trainable slots", sorted(_TRAINABLE_SLOTS)),
    ],
)
def test_every_registered_op_is_known_to_ops(registry, names):
    unknown = [op for op in names if op not in ops.ALL_OPS]
    assert not unknown, f"{registry} handles ops missing from onnxprune.ops: {unknown}"


def test_cost_prices_every_op_the_analysis_propagates_through():
    # QOperator ops are frozen by the analysis; Hardmax is documented as not counted.
    unpriced = {op for op in DEPS_HANDLERS if cost.pricing_of(op) is None}
    assert unpriced == ops.QOPERATOR | ops.HARDMAX


def test_cost_prices_every_op_the_interpreter_runs():
    assert [op for op in supported_ops() if cost.pricing_of(op) is None] == []


def test_elementwise_families_agree_between_deps_and_cost():
    unary = {op for op, fn in DEPS_HANDLERS.items() if fn is deps_handlers.unary}
    binary = {op for op, fn in DEPS_HANDLERS.items() if fn is deps_handlers.elementwise}
    assert unary == ops.CHANNELWISE_UNARY
    assert binary == ops.CHANNELWISE_BINARY
    # every channel-wise math op costs one FLOP per element; casts and copies cost nothing
    for op in ops.UNARY | ops.BINARY:
        assert cost.pricing_of(op) == "elementwise", op
    for op in ops.PASS_THROUGH | ops.CAST:
        assert cost.pricing_of(op) == "zero", op
    for op in ops.VARIADIC:
        assert cost.pricing_of(op) == "variadic", op
    # the constants cost shrinks with the channels are the ones the analysis slices
    assert cost._CHANNELWISE_PARAMS == binary


def test_zero_cost_ops_do_no_arithmetic_in_any_family():
    arithmetic = ops.WEIGHTED | ops.NORMALIZATION | ops.ELEMENTWISE_ARITHMETIC | ops.VARIADIC
    assert not ops.ZERO_COST & arithmetic
    assert not ops.ZERO_COST & (ops.POOL | ops.INPUT_REDUCE | ops.SOFTMAX)


def test_hgraph_categories_follow_families():
    assert set(_CATEGORY.values()) <= set(OP_VOCAB)
    for family, category in (
        (ops.MATMUL, "Gemm/MatMul"),
        (ops.RESHAPE, "Reshape/Flatten"),
        (ops.RESIZE, "Resize"),
    ):
        assert {_CATEGORY[op] for op in family} == {category}


def test_interpreter_trains_the_constants_of_affine_steps():
    for op in ops.ARITHMETIC:
        assert _TRAINABLE_SLOTS[op] is None  # every slot
