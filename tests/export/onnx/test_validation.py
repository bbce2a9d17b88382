"""An export is checked before it replaces anything: the model must run on the example in PyTorch, and ONNX
Runtime must load and run the written file; otherwise ``ExportError``, and the target is as it was."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import mixq


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize("mode", ["static", "dynamic", "weight_only", "fp32"])
def test_a_wrong_shaped_example_is_refused_and_nothing_is_written(tmp_path, mode):
    x = torch.randn(16, 8)
    model = _model() if mode == "fp32" else mixq.quantize(
        _model(), mode, calib_data=[x] if mode == "static" else None, progress=False)
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(mixq.ExportError, match=r"does not run on them in PyTorch .*mat1 and mat2"):
        mixq.export_onnx(model, torch.randn(1, 5), target)
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == ["m.onnx"]


def test_a_file_the_runtime_rejects_never_replaces_the_target(tmp_path, monkeypatch):
    import onnx

    def corrupt_save(proto, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(proto.SerializeToString()[:40])  # a truncated model

    monkeypatch.setattr(onnx, "save", corrupt_save)
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(mixq.ExportError, match="ONNX Runtime rejects the exported file"):
        mixq.export_onnx(_model(), torch.randn(1, 8), target)
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == ["m.onnx"]


def test_an_unwritable_directory_fails_before_the_export(tmp_path):
    if os.geteuid() == 0:
        directory = "/proc"  # refuses new files even to root
    else:
        directory = tmp_path / "ro"
        directory.mkdir(mode=0o555)
    with pytest.raises(OSError, match="cannot create files in"):
        mixq.export_onnx(_model(), torch.randn(1, 8), f"{directory}/m.onnx")
