"""Static graph-mode models (torch.export: Hugging Face encoders) to full-integer ``.tflite``, and the slice hazard:
a quantize after a slice must keep its grid on the slice, not move onto the tensor being sliced."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import fx, nn

pytest.importorskip("litert_torch", reason="the LiteRT extra is not installed: pip install 'mixq[litert]'")
transformers = pytest.importorskip("transformers")

import mixq  # noqa: E402
from mixq.export import ExportError  # noqa: E402
from mixq.export.tflite import fences  # noqa: E402
from mixq.export.tflite.check import TOLERANCE, disagreement, file_outputs, named_outputs  # noqa: E402
from mixq.quant.modules import QuantizedLinear, QuantizedMatMul  # noqa: E402

LAYERS = 2


def _tokens(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {"input_ids": torch.randint(0, 100, (1, 8), generator=g), "attention_mask": torch.ones(1, 8).long()}
    batch["attention_mask"][0, 6:] = 0
    return batch


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    return transformers.BertModel(config).eval(), _tokens(0), [_tokens(k) for k in range(8)]


def _errors(qmodel: nn.Module, path, example) -> dict[str, float]:
    got = file_outputs(path.read_bytes(), example)
    with torch.no_grad():
        want = named_outputs(qmodel(**example))
    return {name: disagreement(got[name], want[name]) for name in want}


def test_pooler_only_keeps_the_last_hidden_state_exact(bert, tmp_path):
    model, example, calib = bert
    qmodel = mixq.quantize(model, "static", calib_data=calib, exclude=["embeddings", "encoder"], float_outputs=False,
                           progress=False)  # an int8 pooler: a quantize right after the CLS token's select
    assert isinstance(qmodel, type(model)) and qmodel.pooler.dense.y_scale is not None
    path = mixq.export_tflite(qmodel, example, tmp_path / "pooler.tflite")
    errors = _errors(qmodel, path, example)
    # the pooler's input grid (calibrated on the CLS token) must not round the whole hidden state, a float output
    assert errors["last_hidden_state"] < 1e-5, errors
    assert errors["pooler_output"] <= TOLERANCE, errors
    slices = [op for op in mixq.inspect_tflite(path).ops if op.op_type in ("SLICE", "STRIDED_SLICE", "GATHER")]
    assert slices and all(op.input_types[0] == "float32" for op in slices), slices


def test_whole_tiny_bert_is_full_integer_and_agrees_with_the_simulation(bert, tmp_path):
    model, example, calib = bert
    qmodel = mixq.quantize(model, "static", calib_data=calib, float_outputs=False, progress=False)
    linears = [m for m in qmodel.modules() if isinstance(m, QuantizedLinear)]
    assert len(linears) == 6 * LAYERS + 1 and all(m.y_scale is not None for m in linears)
    assert sum(isinstance(m, QuantizedMatMul) for m in qmodel.modules()) == 2 * LAYERS
    path = mixq.export_tflite(qmodel, example, tmp_path / "bert_int8.tflite")
    info = mixq.inspect_tflite(path)
    fcs = [op for op in info.ops if op.op_type == "FULLY_CONNECTED"]
    assert len(fcs) == len(linears) and all(op.input_types[:2] == ("int8", "int8") for op in fcs), info
    assert sum(op.op_type == "BATCH_MATMUL" and op.input_types == ("int8", "int8") for op in info.ops) >= LAYERS
    errors = _errors(qmodel, path, example)
    assert max(errors.values()) <= TOLERANCE, errors
    with torch.no_grad():  # and the simulation is still the float model, within int8's error
        ref = model(**example).last_hidden_state
        sim = qmodel(**example).last_hidden_state
    assert disagreement(sim.numpy(), ref.numpy()) < 0.1


def test_float_output_linears_run_as_hybrid_kernels(bert, tmp_path):
    """Graph mode's default keeps a Linear's output float where no integer kernel reads it (ONNX Runtime's
    MatMulIntegerToFloat); LiteRT runs those as hybrid kernels: float input on mixq's grid, int8 weights."""
    model, example, calib = bert
    qmodel = mixq.quantize(model, "static", calib_data=calib, progress=False)
    floats = [m for m in qmodel.modules() if isinstance(m, QuantizedLinear) and m.y_scale is None]
    assert len(floats) == 3 * LAYERS + 1  # attention output, intermediate, output; the pooler
    path = mixq.export_tflite(qmodel, example, tmp_path / "bert_hybrid.tflite")
    fcs = [op for op in mixq.inspect_tflite(path).ops if op.op_type == "FULLY_CONNECTED"]
    assert sum(op.input_types[:2] == ("float32", "int8") for op in fcs) == len(floats), fcs
    assert sum(op.input_types[:2] == ("int8", "int8") for op in fcs) == 3 * LAYERS, fcs  # query, key, value
    errors = _errors(qmodel, path, example)  # the hybrid kernels round their inputs again, on a per-row grid
    assert max(errors.values()) <= 2 * TOLERANCE, errors


def test_quantized_for_litert_the_simulation_computes_what_the_file_does(bert, tmp_path):
    """``runtime='litert'``: the float-output Linears simulate LiteRT's hybrid kernel (input rounded per row at run
    time), so the file and the simulation agree on inputs they were not calibrated on, closer than a model quantized
    for ONNX Runtime (input on one calibrated grid per tensor) does."""
    model, example, calib = bert
    qmodel = mixq.quantize(model, "static", calib_data=calib, runtime="litert", progress=False)
    rows = [m for m in qmodel.modules() if isinstance(m, QuantizedLinear) and m.y_scale is None]
    assert len(rows) == 3 * LAYERS + 1 and all(m.rows for m in rows)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*quantized for ONNX Runtime")  # not said of this model
        path = mixq.export_tflite(qmodel, example, tmp_path / "bert_litert.tflite")
    fcs = [op for op in mixq.inspect_tflite(path).ops if op.op_type == "FULLY_CONNECTED"]
    int8 = sum(op.input_types[:2] == ("int8", "int8") for op in fcs)
    hybrid = sum(op.input_types[:2] == ("float32", "int8") for op in fcs)
    assert (int8, hybrid, len(fcs)) == (3 * LAYERS, len(rows), 6 * LAYERS + 1), fcs
    ort = mixq.quantize(model, "static", calib_data=calib, progress=False)
    with pytest.warns(UserWarning, match=r"7 Linears with integer weights and a float output .*quantized for "
                                         r"ONNX Runtime.*runtime='litert'"):
        ort_path = mixq.export_tflite(ort, example, tmp_path / "bert_ort.tflite")
    for seed in (100, 101, 102):  # held-out inputs
        errors = _errors(qmodel, path, _tokens(seed))
        ort_errors = _errors(ort, ort_path, _tokens(seed))
        assert max(errors.values()) <= TOLERANCE / 10, errors  # a tenth of a step RMS: the same roundings
        assert max(errors.values()) < max(ort_errors.values()), (errors, ort_errors)


class Pooled(nn.Module):
    """A hidden state returned whole and read through ``h[:, 0]`` by a quantized head, as a BERT pooler does (the
    branch on a shape keeps torch.fx out, so mixq captures it with torch.export)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(self.body(x))
        return h, self.head(h[:, 0] if h.shape[1] > 1 else h.squeeze(1))


def _pooled_inputs(seed: int) -> torch.Tensor:
    x = torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(seed))
    x[:, 0] = 0.0  # a fixed first token (a CLS): its normalized range is not the other tokens'
    return x


def test_the_self_check_refuses_a_file_whose_quantize_moved_onto_the_sliced_tensor(tmp_path, monkeypatch):
    torch.manual_seed(0)
    qmodel = mixq.quantize(Pooled().eval(), "static", calib_data=[_pooled_inputs(k) for k in range(4)],
                           exclude=["body", "norm"], float_outputs=False, progress=False)
    assert isinstance(qmodel, Pooled) and isinstance(qmodel.graph, fx.Graph)
    assert qmodel.head.y_scale is not None  # int8 in and out
    example = _pooled_inputs(9)
    path = mixq.export_tflite(qmodel, example, tmp_path / "fenced.tflite")
    got = file_outputs(path.read_bytes(), {"args_0": example})
    with torch.no_grad():
        hidden = qmodel(example)[0].numpy()
    assert disagreement(got["output_0"], hidden) < 1e-5
    monkeypatch.setattr(fences, "fence_sliced_quantizes", lambda gm: 0)  # the converter then moves the quantize
    with pytest.raises(ExportError, match=r"file disagrees with mixq's .*'output_0'"):
        mixq.export_tflite(qmodel, example, tmp_path / "unfenced.tflite")
    assert not (tmp_path / "unfenced.tflite").exists()
