"""TensorFlow ``GraphDef`` protobuf messages, defined in Python (no protoc, no TensorFlow).

The messages are declared from TensorFlow's ``.proto`` files (``graph.proto``, ``node_def.proto``,
``attr_value.proto``, ``tensor.proto``, ``tensor_shape.proto``, ``versions.proto``, ``types.proto``) as a
:class:`~google.protobuf.descriptor_pb2.FileDescriptorProto` built here, with the same field numbers and wire types,
so a frozen graph (``frozen_inference_graph.pb``) parses with :meth:`GraphDef.ParseFromString`. Only what a frozen
inference graph needs is declared: ``GraphDef.library`` (functions) and the resource / variant tensor fields are
left out and are skipped as unknown fields when present.

Public names: :data:`GraphDef`, :data:`NodeDef`, :data:`AttrValue`, :data:`TensorProto`, :data:`TensorShapeProto`,
:data:`VersionDef` (message classes) and :data:`DT` (``DataType`` enum numbers by name).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["GraphDef", "NodeDef", "AttrValue", "NameAttrList", "TensorProto", "TensorShapeProto", "VersionDef", "DT",
           "DT_NAMES"]

_PACKAGE = "multibox.tf"

#: TensorFlow ``DataType`` numbers (``types.proto``) of the dtypes a frozen detection graph uses.
DT: dict[str, int] = {
    "DT_INVALID": 0, "DT_FLOAT": 1, "DT_DOUBLE": 2, "DT_INT32": 3, "DT_UINT8": 4, "DT_INT16": 5, "DT_INT8": 6,
    "DT_STRING": 7, "DT_COMPLEX64": 8, "DT_INT64": 9, "DT_BOOL": 10, "DT_QINT8": 11, "DT_QUINT8": 12,
    "DT_QINT32": 13, "DT_BFLOAT16": 14, "DT_QINT16": 15, "DT_QUINT16": 16, "DT_UINT16": 17, "DT_COMPLEX128": 18,
    "DT_HALF": 19, "DT_RESOURCE": 20, "DT_VARIANT": 21, "DT_UINT32": 22, "DT_UINT64": 23,
}
#: ``DataType`` number -> name.
DT_NAMES: dict[int, str] = {v: k for k, v in DT.items()}

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED


def _field(msg: Any, name: str, number: int, ftype: int, *, repeated: bool = False, type_name: str | None = None,
           oneof: int | None = None, packed: bool | None = None) -> None:
    f = msg.field.add(name=name, number=number, type=ftype, label=_REP if repeated else _OPT)
    if type_name is not None:
        f.type_name = f".{_PACKAGE}.{type_name}"
    if oneof is not None:
        f.oneof_index = oneof
    if packed is not None:
        f.options.packed = packed


def _map_entry(msg: Any, entry_name: str, value_type: str) -> None:
    """Nested ``<entry_name>`` message of a ``map<string, value_type>`` field."""
    entry = msg.nested_type.add(name=entry_name)
    entry.options.map_entry = True
    _field(entry, "key", 1, _F.TYPE_STRING)
    _field(entry, "value", 2, _F.TYPE_MESSAGE, type_name=value_type)


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name="multibox/tf_graph.proto", package=_PACKAGE, syntax="proto3")

    enum = fd.enum_type.add(name="DataType")
    for name, number in sorted(DT.items(), key=lambda kv: kv[1]):
        enum.value.add(name=name, number=number)

    # tensor_shape.proto
    shape = fd.message_type.add(name="TensorShapeProto")
    dim = shape.nested_type.add(name="Dim")
    _field(dim, "size", 1, _F.TYPE_INT64)
    _field(dim, "name", 2, _F.TYPE_STRING)
    _field(shape, "dim", 2, _F.TYPE_MESSAGE, repeated=True, type_name="TensorShapeProto.Dim")
    _field(shape, "unknown_rank", 3, _F.TYPE_BOOL)

    # tensor.proto (resource_handle_val 14 and variant_val 15 are not declared)
    tensor = fd.message_type.add(name="TensorProto")
    _field(tensor, "dtype", 1, _F.TYPE_ENUM, type_name="DataType")
    _field(tensor, "tensor_shape", 2, _F.TYPE_MESSAGE, type_name="TensorShapeProto")
    _field(tensor, "version_number", 3, _F.TYPE_INT32)
    _field(tensor, "tensor_content", 4, _F.TYPE_BYTES)
    _field(tensor, "float_val", 5, _F.TYPE_FLOAT, repeated=True, packed=True)
    _field(tensor, "double_val", 6, _F.TYPE_DOUBLE, repeated=True, packed=True)
    _field(tensor, "int_val", 7, _F.TYPE_INT32, repeated=True, packed=True)
    _field(tensor, "string_val", 8, _F.TYPE_BYTES, repeated=True)
    _field(tensor, "scomplex_val", 9, _F.TYPE_FLOAT, repeated=True, packed=True)
    _field(tensor, "int64_val", 10, _F.TYPE_INT64, repeated=True, packed=True)
    _field(tensor, "bool_val", 11, _F.TYPE_BOOL, repeated=True, packed=True)
    _field(tensor, "dcomplex_val", 12, _F.TYPE_DOUBLE, repeated=True, packed=True)
    _field(tensor, "half_val", 13, _F.TYPE_INT32, repeated=True, packed=True)
    _field(tensor, "uint32_val", 16, _F.TYPE_UINT32, repeated=True, packed=True)
    _field(tensor, "uint64_val", 17, _F.TYPE_UINT64, repeated=True, packed=True)

    # attr_value.proto
    attr = fd.message_type.add(name="AttrValue")
    lst = attr.nested_type.add(name="ListValue")
    _field(lst, "s", 2, _F.TYPE_BYTES, repeated=True)
    _field(lst, "i", 3, _F.TYPE_INT64, repeated=True, packed=True)
    _field(lst, "f", 4, _F.TYPE_FLOAT, repeated=True, packed=True)
    _field(lst, "b", 5, _F.TYPE_BOOL, repeated=True, packed=True)
    _field(lst, "type", 6, _F.TYPE_ENUM, repeated=True, type_name="DataType", packed=True)
    _field(lst, "shape", 7, _F.TYPE_MESSAGE, repeated=True, type_name="TensorShapeProto")
    _field(lst, "tensor", 8, _F.TYPE_MESSAGE, repeated=True, type_name="TensorProto")
    _field(lst, "func", 9, _F.TYPE_MESSAGE, repeated=True, type_name="NameAttrList")
    attr.oneof_decl.add(name="value")
    _field(attr, "s", 2, _F.TYPE_BYTES, oneof=0)
    _field(attr, "i", 3, _F.TYPE_INT64, oneof=0)
    _field(attr, "f", 4, _F.TYPE_FLOAT, oneof=0)
    _field(attr, "b", 5, _F.TYPE_BOOL, oneof=0)
    _field(attr, "type", 6, _F.TYPE_ENUM, type_name="DataType", oneof=0)
    _field(attr, "shape", 7, _F.TYPE_MESSAGE, type_name="TensorShapeProto", oneof=0)
    _field(attr, "tensor", 8, _F.TYPE_MESSAGE, type_name="TensorProto", oneof=0)
    _field(attr, "list", 1, _F.TYPE_MESSAGE, type_name="AttrValue.ListValue", oneof=0)
    _field(attr, "func", 10, _F.TYPE_MESSAGE, type_name="NameAttrList", oneof=0)
    _field(attr, "placeholder", 9, _F.TYPE_STRING, oneof=0)

    nal = fd.message_type.add(name="NameAttrList")
    _field(nal, "name", 1, _F.TYPE_STRING)
    _map_entry(nal, "AttrEntry", "AttrValue")
    _field(nal, "attr", 2, _F.TYPE_MESSAGE, repeated=True, type_name="NameAttrList.AttrEntry")

    # node_def.proto (experimental_debug_info 6 and experimental_type 7 are not declared)
    node = fd.message_type.add(name="NodeDef")
    _field(node, "name", 1, _F.TYPE_STRING)
    _field(node, "op", 2, _F.TYPE_STRING)
    _field(node, "input", 3, _F.TYPE_STRING, repeated=True)
    _field(node, "device", 4, _F.TYPE_STRING)
    _map_entry(node, "AttrEntry", "AttrValue")
    _field(node, "attr", 5, _F.TYPE_MESSAGE, repeated=True, type_name="NodeDef.AttrEntry")

    # versions.proto
    ver = fd.message_type.add(name="VersionDef")
    _field(ver, "producer", 1, _F.TYPE_INT32)
    _field(ver, "min_consumer", 2, _F.TYPE_INT32)
    _field(ver, "bad_consumers", 3, _F.TYPE_INT32, repeated=True, packed=True)

    # graph.proto (library 2 is not declared)
    graph = fd.message_type.add(name="GraphDef")
    _field(graph, "node", 1, _F.TYPE_MESSAGE, repeated=True, type_name="NodeDef")
    _field(graph, "version", 3, _F.TYPE_INT32)
    _field(graph, "versions", 4, _F.TYPE_MESSAGE, type_name="VersionDef")
    return fd


def _classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    get = getattr(message_factory, "GetMessageClass", None)
    out: dict[str, Any] = {}
    for name in ("GraphDef", "NodeDef", "AttrValue", "NameAttrList", "TensorProto", "TensorShapeProto",
                 "VersionDef"):
        desc = pool.FindMessageTypeByName(f"{_PACKAGE}.{name}")
        out[name] = get(desc) if get is not None else message_factory.MessageFactory(pool).GetPrototype(desc)
    return out


_C = _classes()
GraphDef: Any = _C["GraphDef"]
NodeDef: Any = _C["NodeDef"]
AttrValue: Any = _C["AttrValue"]
NameAttrList: Any = _C["NameAttrList"]
TensorProto: Any = _C["TensorProto"]
TensorShapeProto: Any = _C["TensorShapeProto"]
VersionDef: Any = _C["VersionDef"]
