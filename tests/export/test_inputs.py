"""``mixq.export.inputs``: both exporters take example inputs and ``io_dtype`` in one documented form."""

import pytest
import torch

from mixq.export.inputs import example_args, io_dtype_name

X = torch.zeros(1, 3)


@pytest.mark.parametrize(("given", "expected"), [
    (X, ((X,), {})),
    ((X, X), ((X, X), {})),
    ([X], ((X,), {})),
    ({"x": X}, ((), {"x": X})),
], ids=["tensor", "tuple", "list", "dict"])
def test_example_args(given, expected):
    assert example_args(given, "export_onnx") == expected


def test_keywords_and_other_types_are_refused_by_name():
    with pytest.raises(TypeError, match="a tensor or a tuple of tensors for export_tflite, got dict"):
        example_args({"x": X}, "export_tflite", keywords=False)
    with pytest.raises(TypeError, match="for export_tflite, got tuple"):
        example_args((X, None), "export_tflite", keywords=False)
    with pytest.raises(TypeError, match="a dict of keyword tensors for export_onnx, got str"):
        example_args("x", "export_onnx")


@pytest.mark.parametrize(("given", "expected"), [
    ("float16", "float16"), (torch.float16, "float16"), ("int8", "int8"), (torch.uint8, "uint8"),
], ids=["name", "dtype", "int8-name", "uint8-dtype"])
def test_io_dtype_takes_a_name_or_a_dtype(given, expected):
    assert io_dtype_name(given, ("float32", "float16", "int8", "uint8")) == expected


@pytest.mark.parametrize("given", ["int16", torch.bfloat16, 8], ids=["name", "dtype", "int"])
def test_io_dtype_outside_the_exporters_names_is_refused(given):
    with pytest.raises(ValueError, match=r"io_dtype must be one of \('float32', 'float16'\)"):
        io_dtype_name(given, ("float32", "float16"))
