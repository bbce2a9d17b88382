"""OpenVINO runs mixq's .onnx files as mixq's PyTorch simulation computes them: static (integer kernels) and dynamic
files of a small CNN, an MLP and a tiny Hugging Face BERT (graph mode), compared in f32 within quantization steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mixq
from mixq.export.backend import get_runtime

pytest.importorskip("openvino")
from mixq.export.openvino.inspection import integer_kernels, kernel_precisions  # noqa: E402

F32 = get_runtime("openvino:f32")


def _run(path, inputs):
    session = F32.session(path, threads=1)
    return F32.run(session, F32.feeds(session, inputs)), session


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 5)).eval()


def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 4)).eval()


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _rows(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 12, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("make", "data", "kernels"), [(_cnn, _images, 5), (_mlp, _rows, 3)], ids=["cnn", "mlp"])
def test_static_file_runs_integer_kernels_and_matches_the_simulation(tmp_path, within_steps, make, data, kernels,
                                                                     reduce_range):
    model = make()
    qmodel = mixq.quantize(model, "static", calib_data=[data(16, s) for s in range(3)], progress=False,
                           reduce_range=reduce_range)
    path = mixq.export_onnx(qmodel, data(2, 9), tmp_path / "static.onnx")
    x = data(40, 7)
    (out,), session = _run(path, [x])
    assert integer_kernels(session) == kernels, kernel_precisions(session)
    with torch.no_grad():
        sim, ref = qmodel(x).numpy(), model(x)
    assert within_steps(out, sim, qmodel[-1].y_scale) == 1.0  # the output's own step: rounding ties at most
    assert F32.check(qmodel, path, x) <= float(qmodel[-1].y_scale) * (1 + 1e-5) + 1e-6
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(out), ref, dim=-1)
    assert cos.min().item() >= 0.99


@pytest.mark.parametrize(("make", "data"), [(_cnn, _images), (_mlp, _rows)], ids=["cnn", "mlp"])
def test_dynamic_file_matches_the_simulation(tmp_path, make, data, reduce_range):
    qmodel = mixq.quantize(make(), "dynamic", reduce_range=reduce_range)
    path = mixq.export_onnx(qmodel, data(2, 9), tmp_path / "dynamic.onnx")
    x = data(40, 7)
    (out,), _ = _run(path, [x])
    with torch.no_grad():
        sim = qmodel(x).numpy()
    # the integer products are exact; only float32 rounding of the dequantized sums differs
    assert np.abs(out - sim).max() <= 1e-5 * np.abs(sim).max() + 1e-6


@pytest.fixture(scope="module")
def bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=256, max_position_embeddings=512)
    return _Encoder(transformers.BertModel(config, add_pooling_layer=False).eval()).eval()


class _Encoder(nn.Module):
    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _tokens(batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 500, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq // 2:] = 0  # one padded sequence
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_bert_file_matches_the_simulation(bert, tmp_path, mode, reduce_range):
    qmodel = mixq.quantize(bert, mode, calib_data=[_tokens(4, 16, s) for s in range(3)], progress=False,
                           reduce_range=reduce_range)
    assert isinstance(qmodel, type(bert))  # static BERT runs in graph mode, under its own class
    path = mixq.export_onnx(qmodel, _tokens(2, 16, 0), tmp_path / f"bert_{mode}.onnx")
    for batch, seq in [(3, 20), (1, 7)]:  # one file: symbolic batch and sequence
        inputs = _tokens(batch, seq, 9)
        (out,), session = _run(path, inputs)
        with torch.no_grad():
            sim, ref = qmodel(**inputs).numpy(), bert(**inputs)
        # LayerNorm ends every block: differences are float32 rounding carried through the layers, and an int8
        # activation that rounds the other way at a tie moves a row by one step of that layer's scale
        assert np.abs(out - sim).max() <= 1e-3 * np.abs(sim).max()
        cos = torch.nn.functional.cosine_similarity(torch.from_numpy(out), ref, dim=-1)
        assert cos[inputs["attention_mask"].bool()].min().item() >= 0.99
    if mode == "static":
        assert integer_kernels(session) == 2 * 6, kernel_precisions(session)  # every Linear; attention stays fused


def test_default_precision_is_reported_and_f32_is_what_check_uses(tmp_path):
    model = _mlp()
    path = mixq.export_onnx(model, _rows(2, 0), tmp_path / "fp32.onnx")
    plain = get_runtime("openvino")
    session = plain.session(path, threads=1)
    assert plain.precision(session) in ("f32", "bf16")  # OpenVINO's choice for this CPU
    assert get_runtime("openvino:f32").precision(get_runtime("openvino:f32").session(path, 1)) == "f32"
    assert plain.check(model, path, _rows(8, 1)) <= 1e-5  # f32 whatever the default: bf16 would be ~1e-2
    (out,) = plain.run(session, plain.feeds(session, {"input": _rows(8, 1)}))
    np.testing.assert_allclose(out, model(_rows(8, 1)).detach().numpy(), atol=0.05, rtol=0.05)


def test_kernel_counts_name_each_compiled_kernel_and_its_precision(tmp_path):
    """What the demo's kernel section shows for OpenVINO; ONNX Runtime's kernels come from the file's inspection."""
    model = _mlp()
    qmodel = mixq.quantize(model, "static", calib_data=[_rows(16, s) for s in range(3)], progress=False)
    path = mixq.export_onnx(qmodel, _rows(2, 9), tmp_path / "static.onnx")
    (_, ), session = _run(path, [_rows(4, 7)])
    counts = F32.kernel_counts(session)
    assert sum(n for k, n in counts.items() if k.endswith((" u8", " i8"))) == integer_kernels(session) == 3, counts
    ort = get_runtime("ort")
    assert ort.kernel_counts(ort.session(path, 1)) is None
