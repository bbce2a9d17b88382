"""``mixq bench`` on ONNX and LiteRT exports of one model in one call: one table, every file timed in the same
interleaved rounds; a .tflite file takes inputs of its own signature per --batch size, or the ONNX files' arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("litert_torch", reason="the LiteRT extra is not installed: pip install 'mixq[litert]'")

import mixq  # noqa: E402
from mixq.report import ort_session  # noqa: E402


class Net(nn.Module):
    """Conv, ReLU, spatial mean, Linear: no flatten, so litert-torch can export it with a resizable batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    torch.manual_seed(0)
    model, x = Net().eval(), torch.rand(1, 1, 8, 8)
    static = mixq.quantize(model, "static", calib_data=[torch.rand(8, 1, 8, 8)], progress=False)
    mixq.export_onnx(model, x, root / "net.onnx")
    mixq.export_tflite(model, x, root / "net.tflite")
    mixq.export_tflite(static, x, root / "net_int8.tflite", io_dtype="int8")
    mixq.export_tflite(model, x, root / "net_nhwc.tflite", nhwc=True)
    mixq.export_tflite(model, x, root / "net_dyn.tflite", dynamic_batch=True)
    (name,) = [i.name for i in ort_session(root / "net.onnx").get_inputs()]
    np.savez(root / "x.npz", **{name: np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)})
    return root, name


def _row(out: str, name: str) -> list[str]:
    line = next(ln for ln in out.splitlines() if ln.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_one_table_for_onnx_and_tflite_files_per_batch(mixq_main, exports):
    root, name = exports
    files = ["net.onnx", "net.tflite", "net_int8.tflite", "net_nhwc.tflite", "net_dyn.tflite"]
    code, out, err = mixq_main("bench", *files, "--batch", "2,1", "--runs", "3", "--threads", "1",
                               "--json", "mixed.json", cwd=root)
    assert code == 0, err
    assert "| model | size (KB) | b2 median (ms) | b2 p90 (ms) | b1 median (ms) | b1 p90 (ms) |" in out
    for f in ("net.onnx", "net_dyn.tflite"):  # a resizable batch: both columns (b1 after b2 resizes back)
        assert "n/a" not in _row(out, f), out
    for f in ("net.tflite", "net_int8.tflite", "net_nhwc.tflite"):  # fixed at batch 1
        assert _row(out, f)[2:4] == ["n/a", "n/a"] and "n/a" not in _row(out, f)[4:], out
        assert f"note: {f} b2: input" in out and "has a fixed batch size of 1, not 2" in out
    assert f"inputs: b2: {name}=2x1x8x8; b1: {name}=1x1x8x8" in out
    nhwc = next(ln for ln in out.splitlines() if ln.startswith("inputs of net_nhwc.tflite: "))
    assert nhwc.endswith("=1x8x8x1") and "b1: " in nhwc and "b2" not in nhwc
    assert "inputs of net_dyn.tflite: b2: " in out
    data = json.loads((root / "mixed.json").read_text())
    assert [r["model"] for r in data["results"]] == files and data["batches"] == [2, 1]
    for r in data["results"]:
        assert r["latency"]["1"]["runs"] == 3 and r["latency"]["1"]["median_ms"] > 0


def test_given_arrays_reach_every_file_that_can_take_them(mixq_main, exports):
    root, _ = exports
    code, out, err = mixq_main("bench", "net.onnx", "net.tflite", "net_int8.tflite", "net_nhwc.tflite",
                               "--inputs", "x.npz", "--runs", "2", cwd=root)
    assert code == 0, err
    for f in ("net.onnx", "net.tflite", "net_int8.tflite"):  # the int8-I/O file quantizes them on its own grid
        assert "n/a" not in _row(out, f), out
    assert "n/a" in _row(out, "net_nhwc.tflite")
    assert "note: net_nhwc.tflite 1x1x8x8: input" in out and "takes 1x8x8x1, not 1x1x8x8" in out


def test_shape_options_with_only_tflite_files_are_refused_in_one_line(mixq_main, exports):
    root, _ = exports
    code, _, err = mixq_main("bench", "net.tflite", "--shape", "x=1x1x8x8", cwd=root)
    assert code == 2
    assert "--shape and --inputs set ONNX inputs by name, and these are all .tflite files" in err
    assert len(err.strip().splitlines()) == 1
