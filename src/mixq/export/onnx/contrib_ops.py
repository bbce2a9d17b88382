"""ONNX Runtime contrib operators (domain ``com.microsoft``) that mixq emits directly, described for onnxscript.

The torch exporter's onnxscript evaluator needs an ``OpSchema`` to place optional inputs; ONNX itself does not ship
schemas for ORT's contrib ops, so the two we use are declared here (inputs, types and attributes per ORT's docs).
"""

from __future__ import annotations

from onnx.defs import OpSchema
from onnxscript.values import Op, Opset

MS_DOMAIN = "com.microsoft"
_MSFT = Opset(MS_DOMAIN, 1)
_SINGLE = OpSchema.FormalParameterOption.Single
_OPTIONAL = OpSchema.FormalParameterOption.Optional


def _param(name: str, type_str: str, optional: bool = False) -> OpSchema.FormalParameter:
    return OpSchema.FormalParameter(name, type_str, param_option=_OPTIONAL if optional else _SINGLE)


def _matmul_integer_to_float() -> OpSchema:
    return OpSchema(
        "MatMulIntegerToFloat", MS_DOMAIN, 1,
        inputs=[_param("A", "T1"), _param("B", "T2"), _param("a_scale", "T3"), _param("b_scale", "T3"),
                _param("a_zero_point", "T1", True), _param("b_zero_point", "T2", True), _param("bias", "T3", True)],
        outputs=[_param("Y", "T3")],
        type_constraints=[("T1", ["tensor(uint8)", "tensor(int8)"], ""), ("T2", ["tensor(uint8)", "tensor(int8)"], ""),
                          ("T3", ["tensor(float)"], "")],
    )


def _matmul_nbits() -> OpSchema:
    attr = OpSchema.AttrType.INT
    return OpSchema(
        "MatMulNBits", MS_DOMAIN, 1,
        inputs=[_param("A", "T1"), _param("B", "T2"), _param("scales", "T1"), _param("zero_points", "T3", True),
                _param("g_idx", "T4", True), _param("bias", "T1", True)],
        outputs=[_param("Y", "T1")],
        type_constraints=[("T1", ["tensor(float)"], ""), ("T2", ["tensor(uint8)"], ""),
                          ("T3", ["tensor(uint8)", "tensor(float)"], ""), ("T4", ["tensor(int32)"], "")],
        attributes=[OpSchema.Attribute("K", attr, "", required=True), OpSchema.Attribute("N", attr, "", required=True),
                    OpSchema.Attribute("bits", attr, "", required=True),
                    OpSchema.Attribute("block_size", attr, "", required=True),
                    OpSchema.Attribute("accuracy_level", attr, "", required=False)],
    )


MatMulIntegerToFloat = Op(_MSFT, "MatMulIntegerToFloat", _matmul_integer_to_float())
MatMulNBits = Op(_MSFT, "MatMulNBits", _matmul_nbits())
