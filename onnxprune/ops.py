"""The op vocabulary of onnxprune: every ONNX operator family, defined once.

Each stage keeps its own registry of per-op behaviour (channel handlers in
:mod:`onnxprune.deps.handlers`, cost terms in :mod:`onnxprune.cost`, torch implementations in
:mod:`onnxprune.recover.interpreter`, edge categories in :mod:`onnxprune.hgraph.level0`), but
*which ops belong together* is decided here, so an op added to a family is known to every
stage at once. ``tests/test_ops.py`` checks that every registry only names ops listed here
and that the stages agree (e.g. every elementwise op the channel analysis propagates through
is priced by the cost model).

Contract:

- The *base families* (:data:`BASE_FAMILIES`) are disjoint frozensets of default-domain
  (``""``/``ai.onnx``) op types; :data:`ALL_OPS` is their union and :func:`family_of` names
  the base family of an op (``None`` for an op onnxprune knows nothing about).
- The *derived families* below the base ones are unions or subsets that a stage reads (e.g.
  :data:`ZERO_COST`, :data:`CHANNELWISE_BINARY`); they never introduce new ops.
"""

from __future__ import annotations


def _ops(names: str) -> frozenset[str]:
    return frozenset(names.split())


# -- base families (disjoint) ------------------------------------------------------------------

#: Convolutions with a weight tensor ``[C_out, C_in / group, k...]`` (transposed: swapped).
CONV = _ops("Conv ConvTranspose")
#: Matrix products with a reduction dimension ``K``.
MATMUL = _ops("Gemm MatMul")
#: QOperator-format quantized ops (not rewritten: the analysis freezes them).
QOPERATOR = _ops(
    "QLinearConv QLinearMatMul ConvInteger MatMulInteger QLinearAdd QLinearMul "
    "QLinearGlobalAveragePool QLinearAveragePool QLinearConcat QLinearLeakyRelu QLinearSigmoid"
)
#: QDQ-format (de)quantization: elementwise, with per-tensor or per-axis scales.
QUANTIZE = _ops("QuantizeLinear DequantizeLinear")
#: Normalisation per channel of axis 1 with per-channel parameters.
CHANNEL_NORM = _ops("BatchNormalization InstanceNormalization")
#: Normalisation over trailing axes or channel groups.
LAYER_NORM = _ops("LayerNormalization GroupNormalization")
#: Windowed spatial pooling (``kernel_shape``).
POOL = _ops("MaxPool AveragePool LpPool")
#: Pooling over all spatial positions.
GLOBAL_POOL = _ops("GlobalAveragePool GlobalMaxPool GlobalLpPool")
#: Reductions over ``axes``.
REDUCE = _ops(
    "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum "
    "ReduceLogSumExp ReduceSumSquare"
)
#: Index-of-extremum reductions.
ARG_REDUCE = _ops("ArgMax ArgMin")
#: Exponential normalisation along one axis.
SOFTMAX = _ops("Softmax LogSoftmax")
#: One-hot of the maximum along one axis.
HARDMAX = _ops("Hardmax")
#: Channel-wise unary math and activations: output element i depends on input element i only.
UNARY = _ops(
    "Relu LeakyRelu Sigmoid HardSigmoid HardSwish Tanh Elu Selu Celu Softplus Softsign Gelu "
    "Erf Abs Neg Exp Log Sqrt Reciprocal Floor Ceil Round Sin Cos Mish Clip ThresholdedRelu "
    "Shrink Sign IsNaN IsInf Not Relu6 Swish Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh "
    "BitwiseNot"
)
#: Ops that return their input unchanged at inference.
PASS_THROUGH = _ops("Identity Dropout")
#: Element type conversions.
CAST = _ops("Cast CastLike")
#: Broadcasting elementwise ops with two (Where: three) inputs whose channels the analysis
#: ties position by position.
BINARY = _ops("Add Sub Mul Div Pow Mod PRelu Where Equal Greater Less")
#: Broadcasting elementwise ops with any number of inputs.
VARIADIC = _ops("Sum Max Min Mean")
#: Broadcasting comparisons and logic the analysis does not follow channels through.
LOGIC = _ops("LessOrEqual GreaterOrEqual And Or Xor BitShift")
#: Reshapes that keep the element order.
RESHAPE = _ops("Reshape Flatten Squeeze Unsqueeze")
#: Axis permutation.
TRANSPOSE = _ops("Transpose")
#: Moves between the channel axis and spatial blocks (mixes channels).
SPACE_DEPTH = _ops("DepthToSpace SpaceToDepth")
#: Joining and cutting along one axis.
CONCAT_SPLIT = _ops("Concat Split Slice Pad")
#: Index-driven data movement.
GATHER_SCATTER = _ops("Gather GatherElements GatherND ScatterND ScatterElements NonZero")
#: Broadcast copies to a target shape.
EXPAND = _ops("Expand Tile")
#: Spatial resampling.
RESIZE = _ops("Resize Upsample")
#: Ops that read a tensor's shape, not its values.
SHAPE = _ops("Shape Size")
#: Ops that create a tensor from attributes or scalars only.
CONSTANT = _ops("Constant ConstantOfShape Range EyeLike")

BASE_FAMILIES: dict[str, frozenset[str]] = {
    "conv": CONV,
    "matmul": MATMUL,
    "qoperator": QOPERATOR,
    "quantize": QUANTIZE,
    "channel_norm": CHANNEL_NORM,
    "layer_norm": LAYER_NORM,
    "pool": POOL,
    "global_pool": GLOBAL_POOL,
    "reduce": REDUCE,
    "arg_reduce": ARG_REDUCE,
    "softmax": SOFTMAX,
    "hardmax": HARDMAX,
    "unary": UNARY,
    "pass_through": PASS_THROUGH,
    "cast": CAST,
    "binary": BINARY,
    "variadic": VARIADIC,
    "logic": LOGIC,
    "reshape": RESHAPE,
    "transpose": TRANSPOSE,
    "space_depth": SPACE_DEPTH,
    "concat_split": CONCAT_SPLIT,
    "gather_scatter": GATHER_SCATTER,
    "expand": EXPAND,
    "resize": RESIZE,
    "shape": SHAPE,
    "constant": CONSTANT,
}

ALL_OPS: frozenset[str] = frozenset().union(*BASE_FAMILIES.values())

_FAMILY_OF: dict[str, str] = {op: name for name, ops in BASE_FAMILIES.items() for op in ops}


def family_of(op_type: str) -> str | None:
    """Name of the base family of ``op_type`` (a key of :data:`BASE_FAMILIES`), else ``None``."""
    return _FAMILY_OF.get(op_type)


# -- derived families -------------------------------------------------------------------------

#: Ops carrying weights whose rows/columns are pruned (Conv+BN fusion targets in hgraph).
WEIGHTED = CONV | MATMUL
#: Every normalisation op.
NORMALIZATION = CHANNEL_NORM | LAYER_NORM
#: Normalisation along one axis (the analysis passes channels when that axis is another one).
AXIS_NORMALIZE = SOFTMAX | HARDMAX
#: Channel-preserving single-input ops the analysis passes channels through unchanged.
CHANNELWISE_UNARY = UNARY | PASS_THROUGH | CAST
#: Broadcasting elementwise ops whose channel inputs are tied and whose constants spanning the
#: channel axis are sliced with it (the cost model shrinks exactly these constants).
CHANNELWISE_BINARY = BINARY | VARIADIC
#: Elementwise arithmetic priced at one FLOP per output element.
ELEMENTWISE_ARITHMETIC = UNARY | BINARY | LOGIC
#: The four arithmetic ops whose constant operand makes an affine step (hgraph fusion) and is
#: trainable in the interpreter.
ARITHMETIC = frozenset({"Add", "Sub", "Mul", "Div"})
#: Ops priced by the number of *input* elements.
INPUT_REDUCE = GLOBAL_POOL | REDUCE | ARG_REDUCE
#: Pure data movement, type conversion, shape reading and constant creation: no arithmetic.
ZERO_COST = (
    PASS_THROUGH
    | CAST
    | RESHAPE
    | TRANSPOSE
    | SPACE_DEPTH
    | CONCAT_SPLIT
    | GATHER_SCATTER
    | EXPAND
    | RESIZE
    | SHAPE
    | CONSTANT
)

__all__ = [
    "ALL_OPS",
    "ARG_REDUCE",
    "ARITHMETIC",
    "AXIS_NORMALIZE",
    "BASE_FAMILIES",
    "BINARY",
    "CAST",
    "CHANNELWISE_BINARY",
    "CHANNELWISE_UNARY",
    "CHANNEL_NORM",
    "CONCAT_SPLIT",
    "CONSTANT",
    "CONV",
    "ELEMENTWISE_ARITHMETIC",
    "EXPAND",
    "GATHER_SCATTER",
    "GLOBAL_POOL",
    "HARDMAX",
    "INPUT_REDUCE",
    "LAYER_NORM",
    "LOGIC",
    "MATMUL",
    "NORMALIZATION",
    "PASS_THROUGH",
    "POOL",
    "QOPERATOR",
    "QUANTIZE",
    "REDUCE",
    "RESHAPE",
    "RESIZE",
    "SHAPE",
    "SOFTMAX",
    "SPACE_DEPTH",
    "TRANSPOSE",
    "UNARY",
    "VARIADIC",
    "WEIGHTED",
    "ZERO_COST",
    "family_of",
]
