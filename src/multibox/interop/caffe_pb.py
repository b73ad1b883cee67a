"""Caffe's protobuf messages (the subset an SSD deploy file and caffemodel use), built without ``protoc``.

The messages are declared here as a table and turned into a ``FileDescriptorProto`` at import time, in a private
descriptor pool (so that another package's ``caffe`` messages cannot clash). Field numbers, types and defaults follow
BVLC Caffe's ``caffe.proto`` plus the additions of the SSD fork (``PriorBoxParameter``,
``DetectionOutputParameter``, ``NormalizeParameter``, ``PermuteParameter``, ...); only wire compatibility matters,
and the text format needs the field and enum value names.

Use :func:`message_class` (``message_class("NetParameter")``) or the module constants :data:`NetParameter`,
:data:`LayerParameter`, :data:`BlobProto`, :data:`BlobShape`.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["message_class", "NetParameter", "LayerParameter", "BlobProto", "BlobShape", "PACKAGE"]

PACKAGE = "caffe"

# A field: (name, number, type, label, default, options). ``type`` is a scalar type name or the name of a message
# or enum (relative names are resolved in this file's package). ``label``: "opt" or "rep"; "rep+" is packed.
_Field = tuple[str, int, str, str, Any]

_FILLER = [
    ("type", 1, "string", "opt", "constant"),
    ("value", 2, "float", "opt", None),
    ("min", 3, "float", "opt", None),
    ("max", 4, "float", "opt", "1"),
    ("mean", 5, "float", "opt", None),
    ("std", 6, "float", "opt", "1"),
    ("sparse", 7, "int32", "opt", "-1"),
    ("variance_norm", 8, "FillerParameter.VarianceNorm", "opt", "FAN_IN"),
]

# message name -> (fields, nested enums {name: [(value name, number)]})
_MESSAGES: dict[str, tuple[list[_Field], dict[str, list[tuple[str, int]]]]] = {
    "BlobShape": ([("dim", 1, "int64", "rep+", None)], {}),
    "BlobProto": ([
        ("num", 1, "int32", "opt", None),
        ("channels", 2, "int32", "opt", None),
        ("height", 3, "int32", "opt", None),
        ("width", 4, "int32", "opt", None),
        ("data", 5, "float", "rep+", None),
        ("diff", 6, "float", "rep+", None),
        ("shape", 7, "BlobShape", "opt", None),
        ("double_data", 8, "double", "rep+", None),
        ("double_diff", 9, "double", "rep+", None),
    ], {}),
    "FillerParameter": (_FILLER, {"VarianceNorm": [("FAN_IN", 0), ("FAN_OUT", 1), ("AVERAGE", 2)]}),
    "NetState": ([
        ("phase", 1, "Phase", "opt", "TEST"),
        ("level", 2, "int32", "opt", None),
        ("stage", 3, "string", "rep", None),
    ], {}),
    "NetStateRule": ([
        ("phase", 1, "Phase", "opt", None),
        ("min_level", 2, "int32", "opt", None),
        ("max_level", 3, "int32", "opt", None),
        ("stage", 4, "string", "rep", None),
        ("not_stage", 5, "string", "rep", None),
    ], {}),
    "ParamSpec": ([
        ("name", 1, "string", "opt", None),
        ("share_mode", 2, "ParamSpec.DimCheckMode", "opt", None),
        ("lr_mult", 3, "float", "opt", "1"),
        ("decay_mult", 4, "float", "opt", "1"),
    ], {"DimCheckMode": [("STRICT", 0), ("PERMISSIVE", 1)]}),
    "NetParameter": ([
        ("name", 1, "string", "opt", None),
        ("layers", 2, "V1LayerParameter", "rep", None),
        ("input", 3, "string", "rep", None),
        ("input_dim", 4, "int32", "rep", None),
        ("force_backward", 5, "bool", "opt", None),
        ("state", 6, "NetState", "opt", None),
        ("debug_info", 7, "bool", "opt", None),
        ("input_shape", 8, "BlobShape", "rep", None),
        ("layer", 100, "LayerParameter", "rep", None),
    ], {}),
    # Only enough of the deprecated V1 format to recognize it and say so.
    "V1LayerParameter": ([
        ("bottom", 2, "string", "rep", None),
        ("top", 3, "string", "rep", None),
        ("name", 4, "string", "opt", None),
        ("type", 5, "int32", "opt", None),
        ("blobs", 6, "BlobProto", "rep", None),
    ], {}),
    "LayerParameter": ([
        ("name", 1, "string", "opt", None),
        ("type", 2, "string", "opt", None),
        ("bottom", 3, "string", "rep", None),
        ("top", 4, "string", "rep", None),
        ("loss_weight", 5, "float", "rep", None),
        ("param", 6, "ParamSpec", "rep", None),
        ("blobs", 7, "BlobProto", "rep", None),
        ("include", 8, "NetStateRule", "rep", None),
        ("exclude", 9, "NetStateRule", "rep", None),
        ("phase", 10, "Phase", "opt", None),
        ("propagate_down", 11, "bool", "rep", None),
        ("concat_param", 104, "ConcatParameter", "opt", None),
        ("convolution_param", 106, "ConvolutionParameter", "opt", None),
        ("dropout_param", 108, "DropoutParameter", "opt", None),
        ("eltwise_param", 110, "EltwiseParameter", "opt", None),
        ("pooling_param", 121, "PoolingParameter", "opt", None),
        ("relu_param", 123, "ReLUParameter", "opt", None),
        ("softmax_param", 125, "SoftmaxParameter", "opt", None),
        ("reshape_param", 133, "ReshapeParameter", "opt", None),
        ("flatten_param", 135, "FlattenParameter", "opt", None),
        ("batch_norm_param", 139, "BatchNormParameter", "opt", None),
        ("scale_param", 142, "ScaleParameter", "opt", None),
        ("input_param", 143, "InputParameter", "opt", None),
        # SSD fork
        ("permute_param", 202, "PermuteParameter", "opt", None),
        ("prior_box_param", 203, "PriorBoxParameter", "opt", None),
        ("detection_output_param", 204, "DetectionOutputParameter", "opt", None),
        ("norm_param", 206, "NormalizeParameter", "opt", None),
    ], {}),
    "ConcatParameter": ([
        ("concat_dim", 1, "uint32", "opt", "1"),
        ("axis", 2, "int32", "opt", "1"),
    ], {}),
    "ConvolutionParameter": ([
        ("num_output", 1, "uint32", "opt", None),
        ("bias_term", 2, "bool", "opt", "true"),
        ("pad", 3, "uint32", "rep", None),
        ("kernel_size", 4, "uint32", "rep", None),
        ("group", 5, "uint32", "opt", "1"),
        ("stride", 6, "uint32", "rep", None),
        ("weight_filler", 7, "FillerParameter", "opt", None),
        ("bias_filler", 8, "FillerParameter", "opt", None),
        ("pad_h", 9, "uint32", "opt", None),
        ("pad_w", 10, "uint32", "opt", None),
        ("kernel_h", 11, "uint32", "opt", None),
        ("kernel_w", 12, "uint32", "opt", None),
        ("stride_h", 13, "uint32", "opt", None),
        ("stride_w", 14, "uint32", "opt", None),
        ("engine", 15, "ConvolutionParameter.Engine", "opt", None),
        ("axis", 16, "int32", "opt", "1"),
        ("force_nd_im2col", 17, "bool", "opt", None),
        ("dilation", 18, "uint32", "rep", None),
    ], {"Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)]}),
    "DropoutParameter": ([("dropout_ratio", 1, "float", "opt", "0.5")], {}),
    "EltwiseParameter": ([
        ("operation", 1, "EltwiseParameter.EltwiseOp", "opt", "SUM"),
        ("coeff", 2, "float", "rep", None),
        ("stable_prod_grad", 3, "bool", "opt", "true"),
    ], {"EltwiseOp": [("PROD", 0), ("SUM", 1), ("MAX", 2)]}),
    "PoolingParameter": ([
        ("pool", 1, "PoolingParameter.PoolMethod", "opt", "MAX"),
        ("kernel_size", 2, "uint32", "opt", None),
        ("stride", 3, "uint32", "opt", "1"),
        ("pad", 4, "uint32", "opt", None),
        ("kernel_h", 5, "uint32", "opt", None),
        ("kernel_w", 6, "uint32", "opt", None),
        ("stride_h", 7, "uint32", "opt", None),
        ("stride_w", 8, "uint32", "opt", None),
        ("pad_h", 9, "uint32", "opt", None),
        ("pad_w", 10, "uint32", "opt", None),
        ("engine", 11, "PoolingParameter.Engine", "opt", None),
        ("global_pooling", 12, "bool", "opt", None),
        # later BVLC Caffe: CEIL (the classic behaviour) or FLOOR
        ("round_mode", 13, "PoolingParameter.RoundMode", "opt", "CEIL"),
    ], {"PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
        "Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
        "RoundMode": [("CEIL", 0), ("FLOOR", 1)]}),
    "ReLUParameter": ([
        ("negative_slope", 1, "float", "opt", None),
        ("engine", 2, "ReLUParameter.Engine", "opt", None),
    ], {"Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)]}),
    "SoftmaxParameter": ([
        ("engine", 1, "SoftmaxParameter.Engine", "opt", None),
        ("axis", 2, "int32", "opt", "1"),
    ], {"Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)]}),
    "ReshapeParameter": ([
        ("shape", 1, "BlobShape", "opt", None),
        ("axis", 2, "int32", "opt", None),
        ("num_axes", 3, "int32", "opt", "-1"),
    ], {}),
    "FlattenParameter": ([
        ("axis", 1, "int32", "opt", "1"),
        ("end_axis", 2, "int32", "opt", "-1"),
    ], {}),
    "BatchNormParameter": ([
        ("use_global_stats", 1, "bool", "opt", None),
        ("moving_average_fraction", 2, "float", "opt", "0.999"),
        ("eps", 3, "float", "opt", "1e-05"),
        ("scale_filler", 5, "FillerParameter", "opt", None),
        ("bias_filler", 6, "FillerParameter", "opt", None),
        ("engine", 15, "BatchNormParameter.Engine", "opt", None),
    ], {"Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)]}),
    "ScaleParameter": ([
        ("axis", 1, "int32", "opt", "1"),
        ("num_axes", 2, "int32", "opt", "1"),
        ("filler", 3, "FillerParameter", "opt", None),
        ("bias_term", 4, "bool", "opt", None),
        ("bias_filler", 5, "FillerParameter", "opt", None),
    ], {}),
    "InputParameter": ([("shape", 1, "BlobShape", "rep", None)], {}),
    "PermuteParameter": ([("order", 1, "uint32", "rep", None)], {}),
    "NormalizeParameter": ([
        ("across_spatial", 1, "bool", "opt", "true"),
        ("scale_filler", 2, "FillerParameter", "opt", None),
        ("channel_shared", 3, "bool", "opt", "true"),
        ("eps", 4, "float", "opt", "1e-10"),
    ], {}),
    "PriorBoxParameter": ([
        ("min_size", 1, "float", "rep", None),
        ("max_size", 2, "float", "rep", None),
        ("aspect_ratio", 3, "float", "rep", None),
        ("flip", 4, "bool", "opt", "true"),
        ("clip", 5, "bool", "opt", None),
        ("variance", 6, "float", "rep", None),
        ("img_size", 7, "uint32", "opt", None),
        ("img_h", 8, "uint32", "opt", None),
        ("img_w", 9, "uint32", "opt", None),
        ("step", 10, "float", "opt", None),
        ("step_h", 11, "float", "opt", None),
        ("step_w", 12, "float", "opt", None),
        ("offset", 13, "float", "opt", "0.5"),
    ], {"CodeType": [("CORNER", 1), ("CENTER_SIZE", 2), ("CORNER_SIZE", 3)]}),
    "NonMaximumSuppressionParameter": ([
        ("nms_threshold", 1, "float", "opt", "0.3"),
        ("top_k", 2, "int32", "opt", None),
        ("eta", 3, "float", "opt", "1"),
    ], {}),
    "ResizeParameter": ([
        ("prob", 1, "float", "opt", "1"),
        ("resize_mode", 2, "ResizeParameter.Resize_mode", "opt", "WARP"),
        ("height", 3, "uint32", "opt", None),
        ("width", 4, "uint32", "opt", None),
        ("pad_mode", 5, "ResizeParameter.Pad_mode", "opt", "CONSTANT"),
        ("pad_value", 6, "float", "rep", None),
        ("interp_mode", 7, "ResizeParameter.Interp_mode", "rep", None),
        ("height_scale", 8, "uint32", "opt", None),
        ("width_scale", 9, "uint32", "opt", None),
    ], {"Resize_mode": [("WARP", 1), ("FIT_SMALL_SIZE", 2), ("FIT_LARGE_SIZE_AND_PAD", 3)],
        "Pad_mode": [("CONSTANT", 1), ("MIRRORED", 2), ("REPEAT_NEAREST", 3)],
        "Interp_mode": [("LINEAR", 1), ("AREA", 2), ("NEAREST", 3), ("CUBIC", 4), ("LANCZOS4", 5)]}),
    "SaveOutputParameter": ([
        ("output_directory", 1, "string", "opt", None),
        ("output_name_prefix", 2, "string", "opt", None),
        ("output_format", 3, "string", "opt", None),
        ("label_map_file", 4, "string", "opt", None),
        ("name_size_file", 5, "string", "opt", None),
        ("num_test_image", 6, "uint32", "opt", None),
        ("resize_param", 7, "ResizeParameter", "opt", None),
    ], {}),
    "DetectionOutputParameter": ([
        ("num_classes", 1, "uint32", "opt", None),
        ("share_location", 2, "bool", "opt", "true"),
        ("background_label_id", 3, "int32", "opt", None),
        ("nms_param", 4, "NonMaximumSuppressionParameter", "opt", None),
        ("save_output_param", 5, "SaveOutputParameter", "opt", None),
        ("code_type", 6, "PriorBoxParameter.CodeType", "opt", "CORNER"),
        ("keep_top_k", 7, "int32", "opt", "-1"),
        ("variance_encoded_in_target", 8, "bool", "opt", None),
        ("confidence_threshold", 9, "float", "opt", None),
        ("visualize", 10, "bool", "opt", None),
        ("visualize_threshold", 11, "float", "opt", None),
        ("save_file", 12, "string", "opt", None),
    ], {}),
}

_TOP_ENUMS = {"Phase": [("TRAIN", 0), ("TEST", 1)]}

_SCALARS = {
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
    "float": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "uint64": descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
}


def _enum_names() -> set[str]:
    names = set(_TOP_ENUMS)
    for msg, (_, enums) in _MESSAGES.items():
        names |= {f"{msg}.{e}" for e in enums}
    return names


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="multibox_caffe_subset.proto", package=PACKAGE, syntax="proto2")
    fd = descriptor_pb2.FieldDescriptorProto
    enums = _enum_names()
    for name, values in _TOP_ENUMS.items():
        e = fdp.enum_type.add(name=name)
        for vname, num in values:
            e.value.add(name=vname, number=num)
    for msg_name, (fields, nested) in _MESSAGES.items():
        m = fdp.message_type.add(name=msg_name)
        for ename, values in nested.items():
            e = m.enum_type.add(name=ename)
            for vname, num in values:
                e.value.add(name=vname, number=num)
        for fname, number, ftype, label, default in fields:
            f = m.field.add(name=fname, number=number, json_name=fname)
            f.label = fd.LABEL_REPEATED if label.startswith("rep") else fd.LABEL_OPTIONAL
            if label == "rep+":
                f.options.packed = True
            if ftype in _SCALARS:
                f.type = _SCALARS[ftype]
            elif ftype in enums:
                f.type = fd.TYPE_ENUM
                f.type_name = f".{PACKAGE}.{ftype}"
            elif ftype in _MESSAGES:
                f.type = fd.TYPE_MESSAGE
                f.type_name = f".{PACKAGE}.{ftype}"
            else:  # pragma: no cover - a mistake in the table above
                raise AssertionError(f"unknown type {ftype} of {msg_name}.{fname}")
            if default is not None:
                f.default_value = str(default)
    return fdp


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())


def message_class(name: str) -> type:
    """The generated message class ``caffe.<name>`` (e.g. ``"NetParameter"``, ``"PriorBoxParameter"``)."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


NetParameter = message_class("NetParameter")
LayerParameter = message_class("LayerParameter")
BlobProto = message_class("BlobProto")
BlobShape = message_class("BlobShape")
