"""Surgery: rewrite the normalised model with onnx-graphsurgeon.

- :func:`apply_plan` physically removes the channels a :class:`~onnxprune.plan.PruningPlan`
  drops (``surgery.prune``);
- :func:`masked_reference` builds the exactness reference, the model with those channels
  zeroed where they are consumed (``surgery.reference``).

Both import ``analysis.model`` into a ``gs.Graph`` (``surgery.graph_io``), apply the typed
actions the channel handlers recorded (``onnxprune.deps.state``) and export a new model;
the input model is never modified. Node and tensor names are kept; the one exception is a
constant shared by several nodes that must be sliced differently: each variant becomes a
copy named ``<name>__<node name>`` (the original keeps its name where it is still used
unchanged; ``surgery.constants``).
"""

from onnxprune.surgery.prune import apply_plan
from onnxprune.surgery.reference import masked_reference

__all__ = ["apply_plan", "masked_reference"]
