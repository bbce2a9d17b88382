"""The files ``bench_runtimes.py`` times: a MobileNet-style CNN, and for it and the real all-MiniLM-L6-v2 the fp32
ONNX file, mixq's quantized files, ONNX Runtime's quantizer's files and NNCF's int8 OpenVINO model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from ptq_models import settle_batchnorm
from torch import nn

import mixq


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 project, residual add at stride 1."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class MobileNet(nn.Module):
    """MobileNetV2's layout at width 1.0 (stem 3x3/2 to 32 channels, 17 inverted residuals, 1x1 to 1280, pool, fc)."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32),
                                                 nn.ReLU6())]
        cin = 32
        for expand, cout, repeat, stride in self.SETTINGS:
            for i in range(repeat):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(nn.Sequential(nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def make_mobilenet(image: int, seed: int = 0) -> nn.Module:
    """Random weights; BatchNorm statistics gathered from random images, so folding them is not the identity."""
    torch.manual_seed(seed)
    return settle_batchnorm(MobileNet(), image, seed, rounds=3, batch=8)


class Reader:
    """ONNX Runtime's ``CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.items = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def ort_files(fp32: Path, calib: list[dict[str, np.ndarray]], out: Path, transformer: bool) -> dict[str, Path]:
    """ORT ``quantize_dynamic`` (transformer only: ORT's recipe for BERT) and ``quantize_static`` (QDQ,
    per-channel; MatMul-only U8S8 for the transformer, ORT's defaults for the CNN)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    files = {}
    if transformer:
        files["ORT quantize_dynamic"] = out / "ort_dynamic.onnx"
        quantize_dynamic(fp32, files["ORT quantize_dynamic"], per_channel=True, weight_type=QuantType.QInt8)
    static: dict[str, Any] = {"quant_format": QuantFormat.QDQ, "per_channel": True,
                              "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8}
    if transformer:
        static["op_types_to_quantize"] = ["MatMul"]
    files["ORT quantize_static"] = out / "ort_static.onnx"
    quantize_static(fp32, files["ORT quantize_static"], Reader(calib), **static)
    return files


def nncf_file(fp32: Path, calib: list[dict[str, np.ndarray]], out: Path, transformer: bool) -> Path:
    """``nncf.quantize`` on the OpenVINO model read from the fp32 ONNX file (transformer: ``ModelType.TRANSFORMER``),
    saved as OpenVINO IR with float32 weights."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32))
    quantized = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib),
                              model_type=nncf.ModelType.TRANSFORMER if transformer else None)
    path = out / "nncf_int8.xml"
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return path


def mixq_files(model: nn.Module, calib: list[Any], example: Any, out: Path, modes: list[tuple],
               also_for: str | None = None) -> tuple[dict[str, Path], dict[str, nn.Module]]:
    """mixq's files: one per (label, mode, smoothquant[, runtime]) in ``modes`` (``"layernorm"`` is static mode's
    default; ``runtime`` the one the file is quantized for, e.g. ``"openvino"``); also the quantized PyTorch models.
    ``also_for`` (a runtime name): each model quantized for another runtime is exported for it too, as
    ``"<label> @<runtime>"`` (an ONNX Runtime file may hold forms OpenVINO runs slower: ``export_onnx(runtime=)``)."""
    files, models = {}, {}
    for label, mode, smooth, *runtime in modes:
        options = {"runtime": runtime[0]} if runtime else {}
        qmodel = mixq.quantize(model, mode, calib_data=calib, smoothquant=smooth, progress=False, **options)
        files[label] = mixq.export_onnx(qmodel, example, out / f"{label.replace(' ', '_')}.onnx")
        if also_for and runtime[:1] != [also_for]:
            files[f"{label} @{also_for}"] = mixq.export_onnx(
                qmodel, example, out / f"{label.replace(' ', '_')}_{also_for}.onnx", runtime=also_for)
        models[label] = qmodel
    return files, models
