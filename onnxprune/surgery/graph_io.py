"""Import the normalised model into onnx-graphsurgeon and export the rewritten graph.

Contract:

- :func:`import_model` returns a :class:`GsModel` whose ``nodes[i]`` is the ``gs.Node`` of
  node ``i`` of the model (the indices the channel analysis records actions with). The
  model is never written to: graphsurgeon's constants keep pointing at the model's own
  ``TensorProto`` objects (no copy of weights that are not edited), so what its exporter
  would write into (unnamed attribute tensors, the opset lists) never reaches it.
- :func:`export_model` returns a new ``ModelProto``: nodes and initializers from
  graphsurgeon; everything the rewrite does not change and graphsurgeon does not carry is
  taken verbatim from the source model: model-level fields (IR version, opsets, producer,
  metadata, functions, ...), graph inputs and outputs (in order, with their exact types),
  optionally the ``value_info``, quantization annotations, node doc strings and metadata,
  and node attributes graphsurgeon cannot represent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs
from google.protobuf.message import Message
from onnx import AttributeProto, ModelProto

from onnxprune.errors import InternalError

# Attribute kinds graphsurgeon carries faithfully and surgery may edit (group, split, ...).
_GS_ATTRIBUTE_TYPES = {
    AttributeProto.FLOAT,
    AttributeProto.INT,
    AttributeProto.STRING,
    AttributeProto.FLOATS,
    AttributeProto.INTS,
    AttributeProto.STRINGS,
}
# Never edited, imported by graphsurgeon but not exported faithfully: a Constant's value
# (it writes the name of an unnamed tensor into the source proto) and If/Loop bodies (it
# exports an outer initializer a body reads as that body's own initializer).
_OPAQUE_TYPES = {AttributeProto.TENSOR, AttributeProto.GRAPH}
_LIST_FIELDS = {
    AttributeProto.FLOATS: "floats",
    AttributeProto.INTS: "ints",
    AttributeProto.STRINGS: "strings",
}


def _is_utf8(attribute: AttributeProto) -> bool:
    values = [attribute.s] if attribute.type == AttributeProto.STRING else attribute.strings
    try:
        for value in values:
            value.decode()
    except UnicodeDecodeError:
        return False
    return True


def _bypass(attribute: AttributeProto) -> str | None:
    """How ``attribute`` bypasses graphsurgeon: ``"hold"`` (imported, then taken out of the
    gs node and put back verbatim on export: tensors, graphs, empty lists, whose type its
    exporter cannot infer), ``"strip"`` (its importer fails or drops it with a warning:
    sparse tensors, type protos, lists of tensors or graphs, strings that are not UTF-8),
    ``None`` (graphsurgeon carries it)."""
    if attribute.ref_attr_name:
        return None
    if attribute.type in _OPAQUE_TYPES:
        return "hold"
    if attribute.type not in _GS_ATTRIBUTE_TYPES:
        return "strip"
    if attribute.type in _LIST_FIELDS and not getattr(attribute, _LIST_FIELDS[attribute.type]):
        return "hold"
    if attribute.type in (AttributeProto.STRING, AttributeProto.STRINGS):
        return None if _is_utf8(attribute) else "strip"
    return None


@dataclass
class GsModel:
    """A model imported into graphsurgeon.

    - ``graph``: the ``gs.Graph`` being rewritten.
    - ``nodes``: ``nodes[i]`` is the ``gs.Node`` of node ``i`` of the source model.
    - ``held``: per node index, the attributes kept out of graphsurgeon (see
      :func:`_bypass`); :func:`export_model` puts them back verbatim.
    - ``replaced``: initializers the rewrite replaced by copies for all their readers.
    """

    graph: gs.Graph
    nodes: list[gs.Node]
    held: dict[int, list[AttributeProto]] = field(default_factory=dict)
    replaced: set[str] = field(default_factory=set)


def import_model(model: ModelProto) -> GsModel:
    """Import ``model`` into graphsurgeon without copying its weights (see module doc)."""
    held: dict[int, list[AttributeProto]] = {}
    strip = False
    for index, node in enumerate(model.graph.node):
        for attribute in node.attribute:
            how = _bypass(attribute)
            if how is not None:
                held.setdefault(index, []).append(attribute)
                strip = strip or how == "strip"
    source = model
    if strip:
        # Rare: graphsurgeon cannot even import these, so import a private copy without them.
        source = ModelProto()
        source.CopyFrom(model)
        for index, attributes in held.items():
            names = {a.name for a in attributes}
            kept = [a for a in source.graph.node[index].attribute if a.name not in names]
            del source.graph.node[index].attribute[:]
            source.graph.node[index].attribute.extend(kept)
    graph = gs.import_onnx(source)
    if len(graph.nodes) != len(model.graph.node):
        raise InternalError(
            f"graphsurgeon imported {len(graph.nodes)} nodes from a graph of "
            f"{len(model.graph.node)}"
        )
    # The exporter appends missing domains to these lists; they are the source model's own
    # opset_import containers, so give it lists of its own.
    graph.import_domains = list(graph.import_domains or [])
    for function in graph.functions:
        function.import_domains = list(function.import_domains or [])
    nodes = list(graph.nodes)
    for index, attributes in held.items():
        for attribute in attributes:
            nodes[index].attrs.pop(attribute.name, None)
    return GsModel(graph, nodes, held)


def _copy_fields(source: Message, target: Message, skip: set[str]) -> None:
    """Make every field of ``target`` not in ``skip`` equal to ``source``'s."""
    for descriptor in target.DESCRIPTOR.fields:
        if descriptor.name not in skip:
            target.ClearField(descriptor.name)
    for descriptor, value in source.ListFields():
        if descriptor.name in skip:
            continue
        if isinstance(value, Message):
            getattr(target, descriptor.name).CopyFrom(value)
        elif isinstance(value, (bool, int, float, str, bytes)):
            setattr(target, descriptor.name, value)
        else:
            getattr(target, descriptor.name).extend(value)


def _restore_nodes(gs_model: GsModel, source: ModelProto, exported: ModelProto) -> None:
    """Put back per-node fields graphsurgeon drops: held attributes (at their original
    position), ``doc_string`` and ``metadata_props``."""
    position = {id(node): k for k, node in enumerate(gs_model.graph.nodes)}
    for index, node in enumerate(source.graph.node):
        metadata = getattr(node, "metadata_props", ())
        if index not in gs_model.held and not node.HasField("doc_string") and not metadata:
            continue
        if id(gs_model.nodes[index]) not in position:
            raise InternalError(f"node '{node.name}' disappeared from the rewritten graph")
        target = exported.graph.node[position[id(gs_model.nodes[index])]]
        if node.HasField("doc_string"):
            target.doc_string = node.doc_string
        if metadata:
            target.metadata_props.extend(metadata)
        if index in gs_model.held:
            # Source order; an attribute the surgery set wins over the held original, a
            # carried one it removed stays removed, new ones go last.
            held = {a.name for a in gs_model.held[index]}
            rewritten = {a.name: a for a in target.attribute}
            merged = [
                rewritten.pop(a.name) if a.name in rewritten else a
                for a in node.attribute
                if a.name in rewritten or a.name in held
            ]
            merged.extend(rewritten.values())
            del target.attribute[:]
            target.attribute.extend(merged)


def export_model(gs_model: GsModel, source: ModelProto, *, keep_value_info: bool) -> ModelProto:
    """Export the rewritten graph as a new model, taking from ``source`` what the rewrite
    leaves alone (see module doc). ``keep_value_info``: copy ``source``'s value_info (the
    rewrite changed no shape); otherwise the result has none (the caller re-infers)."""
    # No graph.cleanup(): the exporter already writes only the constants nodes read (a
    # replaced original is gone), and cleanup would also drop dead custom-domain nodes that
    # normalisation deliberately keeps. No toposort(): the rewrite adds no node, the masked
    # reference puts each Mul right before its reader, so the source order stays valid.
    exported = gs.export_onnx(
        gs_model.graph, do_type_check=False, opset_imports=list(source.opset_import)
    )
    _copy_fields(source, exported, skip={"graph"})
    graph, source_graph = exported.graph, source.graph
    # Channels reaching graph inputs or outputs are frozen, so the interface is unchanged;
    # copying it keeps initializers listed as inputs, dim names, denotations and doc strings.
    kept = ["input", "output", "quantization_annotation", "metadata_props"]
    if keep_value_info:
        kept.append("value_info")
    for name in kept:
        if name in graph.DESCRIPTOR.fields_by_name:
            graph.ClearField(name)
            getattr(graph, name).extend(getattr(source_graph, name))
    if not keep_value_info:
        graph.ClearField("value_info")
    # graphsurgeon exports only the constants main-graph nodes read. Keep the others as
    # the source has them (read by a held If/Loop body, or listed as a graph input: a
    # default the caller may override), except the ones the rewrite replaced.
    exported_names = {t.name for t in graph.initializer}
    source_inits = {t.name: t for t in source_graph.initializer}
    for name, tensor in source_inits.items():
        if name not in exported_names and name not in gs_model.replaced:
            graph.initializer.append(tensor)
    # graphsurgeon writes constants in the order nodes first read them; keep the source
    # order instead (new constants last). Sorting moves pointers, it copies no tensor.
    order = {name: k for k, name in enumerate(source_inits)}
    graph.initializer.sort(key=lambda tensor: order.get(tensor.name, len(order)))
    _restore_nodes(gs_model, source, exported)
    return exported
