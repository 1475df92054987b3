"""Run an ONNX graph as a ``torch.nn.Module`` whose parameters are the graph's initializers.

Contract:
- :class:`OnnxModule` executes the nodes of ``model.graph`` in their (topological) file order
  with torch operators. Float initializers that feed a trainable slot (Conv/Gemm/MatMul
  weights and biases, BatchNormalization/InstanceNormalization scale and bias, PRelu slope,
  float constants of Add/Sub/Mul/Div) are ``nn.Parameter``s; every other initializer
  (BatchNormalization running statistics, shape constants, indices, Clip bounds, Resize
  scales ...) is a buffer. Nodes whose inputs are all non-trainable constants are evaluated
  once at construction time (shape arithmetic on constants).
- The module reproduces onnxruntime's outputs (float32, 1e-4) for the supported ops;
  construction raises :class:`~onnxprune.errors.UnsupportedOpError` naming the node and the op
  type for anything else (least-squares recovery does not need the interpreter and still works).
- :func:`write_back` returns a copy of the model whose initializers hold the module's current
  parameter and buffer values, in the initializer's original dtype: same nodes, same names,
  same shapes.

Layout: :mod:`.core` holds the runner and the op registry (``@handler("Op")``); the op
handlers are split by family (:mod:`onnxprune.ops`) into :mod:`.conv`, :mod:`.norm`,
:mod:`.elementwise`, :mod:`.shape`, :mod:`.reduce` and :mod:`.resize`, all registered when
this package is imported.
"""

# The family modules register their handlers on import.
from onnxprune.recover.interpreter import (  # noqa: F401
    conv,
    elementwise,
    norm,
    reduce,
    resize,
    shape,
)
from onnxprune.recover.interpreter.conv import conv_input_padded
from onnxprune.recover.interpreter.core import (
    NodeContext,
    OnnxModule,
    OpHandler,
    handler,
    supported_ops,
    write_back,
)

__all__ = [
    "NodeContext",
    "OnnxModule",
    "OpHandler",
    "conv_input_padded",
    "handler",
    "supported_ops",
    "write_back",
]
