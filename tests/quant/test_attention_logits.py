"""Attention logits too sharp for int8 (``mixq.quant.attention_logits``): the projections whose output grid step
moves a Softmax's logits by more than a fraction of a nat are found from one probe pass and stay float, with the
reason; ordinary attention (1/sqrt(d), unit-scale activations) keeps every layer int8."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixq
from mixq.quant import attention_logits
from mixq.quant.attention_logits import logit_gains

D = 16


class Attention(nn.Module):
    """One attention head with a residual MLP after it; ``scale`` multiplies the logits (None: T5's 1, no scaling
    at all), ``sdpa`` runs the fused ``scaled_dot_product_attention`` instead of MatMul -> Softmax -> MatMul."""

    def __init__(self, scale: float | None, sdpa: bool = False, width: float = 1.0) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.head = nn.Linear(D, 4)
        self.scale, self.sdpa = scale, sdpa
        with torch.no_grad():
            for layer in (self.q, self.k):
                layer.weight.mul_(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        scale = 1.0 if self.scale is None else self.scale
        if self.sdpa:
            mixed = F.scaled_dot_product_attention(q, k, v, scale=scale)
        else:
            mixed = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v
        return self.head(x + self.o(mixed))


def _inputs(seed: int) -> torch.Tensor:
    return torch.randn(4, 12, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sdpa", [False, True], ids=["matmul-softmax", "sdpa"])
def test_gains_are_the_logit_scale_times_the_other_operand(sdpa):
    torch.manual_seed(0)
    model = Attention(1 / math.sqrt(D), sdpa=sdpa).eval()
    x = _inputs(0)
    gains = logit_gains(model, x, ["q", "k", "v", "o", "head"])
    with torch.no_grad():
        q, k = model.q(x), model.k(x)
    assert set(gains) == {"q", "k"}  # v and o do not reach a Softmax's input
    assert gains["q"] == pytest.approx(float(k.abs().max()) / math.sqrt(D), rel=1e-6)
    assert gains["k"] == pytest.approx(float(q.abs().max()) / math.sqrt(D), rel=1e-6)


def _error(model: nn.Module, qmodel: nn.Module) -> float:
    x = _inputs(100)
    with torch.no_grad():
        ref = model(x)
        return float((qmodel(x) - ref).norm() / ref.norm())


def _quantize(model: nn.Module, reduce_range: bool) -> nn.Module:
    return mixq.quantize(model, "static", calib_data=[_inputs(seed) for seed in range(4)], progress=False,
                         reduce_range=reduce_range)


def test_sharp_logits_keep_q_and_k_float_and_that_lowers_the_error(reduce_range, monkeypatch):
    torch.manual_seed(0)
    model = Attention(None, width=8.0).eval()  # no 1/sqrt(d) and wide q, k: logits in the hundreds
    qmodel = _quantize(model, reduce_range)
    rows = {r.name: r for r in qmodel.mixq_summary.layers}
    assert {n for n, r in rows.items() if r.status == "float"} == {"q", "k"}
    assert "attention logits" in rows["q"].detail and "nats" in rows["q"].detail
    monkeypatch.setattr(attention_logits, "MAX_STEP_NATS", math.inf)  # the same model with q and k in int8
    forced = _quantize(model, reduce_range)
    assert not forced.mixq_summary.skipped
    assert _error(model, qmodel) < 0.5 * _error(model, forced)


def test_ordinary_attention_keeps_every_layer_int8(reduce_range):
    torch.manual_seed(0)
    model = Attention(1 / math.sqrt(D)).eval()
    assert not _quantize(model, reduce_range).mixq_summary.skipped


def test_qat_keeps_the_same_layers_float():
    torch.manual_seed(0)
    model = Attention(None, width=8.0).eval()
    plan = mixq.prepare_qat(model, example_inputs=_inputs(0)).mixq_qat_plan
    assert {r.name for r in plan.skipped} == {"q", "k"}
    assert all("attention logits" in r.detail for r in plan.skipped)


def test_graph_mode_keeps_the_qk_matmul_float_too_and_matches_onnx_runtime(reduce_range, tmp_path, ort_run):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64)).eval()
    attention = bert.encoder.layer[0].attention.self
    with torch.no_grad():  # one int8 step of q or k moves the logits by ~2.5 nats
        for layer in (attention.query, attention.key):
            layer.weight.mul_(100.0)

    def batch(seed: int, seq: int = 10) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, 100, (2, seq), generator=torch.Generator().manual_seed(seed))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    qmodel = mixq.quantize(bert, "static", calib_data=[batch(s) for s in range(4)], reduce_range=reduce_range,
                           progress=False)
    rows = {r.name: r for r in qmodel.mixq_summary.layers}
    prefix = "encoder.layer.0.attention.self."
    assert "graph mode (torch.export)" in " ".join(qmodel.mixq_summary.notes)
    assert {n for n, r in rows.items() if r.status == "float" and n.startswith(prefix)} == {
        f"{prefix}query", f"{prefix}key", f"{prefix}mixq_matmul_0"}  # Q·Kᵀ float; probabilities·V stays int8
    assert rows[f"{prefix}mixq_matmul_1"].status == "quantized"
    path = mixq.export_onnx(qmodel, batch(0), tmp_path / "bert.onnx")
    x = batch(99, 13)
    (hidden, *_) = ort_run(path, **x)
    with torch.no_grad():
        sim = qmodel(**x).last_hidden_state.numpy()
    assert float(np.abs(hidden - sim).max()) <= 1e-3 * float(np.abs(sim).max())


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else -self.fc(x)  # control flow on values: torch.fx cannot trace it


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4)).eval()


@pytest.mark.parametrize(("build", "reads"), [
    (lambda: Attention(1.0), True), (lambda: Attention(1.0, sdpa=True), True),
    (lambda: nn.Sequential(nn.Linear(D, D), nn.Softmax(-1)), True),  # a leaf module calling softmax
    (lambda: nn.Sequential(nn.Linear(D, D), nn.MultiheadAttention(D, 2, batch_first=True)), True),
    (lambda: nn.TransformerEncoderLayer(D, 2, batch_first=True), True),
    (_Untraceable, True),  # cannot tell: probed
    (_cnn, False), (lambda: nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.LayerNorm(D), nn.Linear(D, 4)), False),
], ids=["matmul-softmax", "sdpa", "softmax-module", "mha-module", "encoder-layer", "untraceable", "cnn", "mlp"])
def test_reads_logits_is_decided_from_the_graph(build, reads):
    assert attention_logits.reads_logits(build().eval()) is reads


def test_a_model_without_logits_skips_the_probe_pass_with_the_same_result(monkeypatch):
    probes: list[int] = []
    real = attention_logits.probe_gains
    monkeypatch.setattr(attention_logits, "probe_gains", lambda *a: probes.append(1) or real(*a))
    data = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    skipped = mixq.quantize(_cnn(), "static", calib_data=data, progress=False)
    assert probes == []
    monkeypatch.setattr(attention_logits, "reads_logits", lambda model: True)
    probed = mixq.quantize(_cnn(), "static", calib_data=data, progress=False)
    assert probes == [1]
    a, b = skipped.state_dict(), probed.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(skipped(x), probed(x))
    assert skipped.mixq_summary.notes == probed.mixq_summary.notes


def _helper_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.softmax(q @ k.transpose(-1, -2), dim=-1)


def _wrapped_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return _helper_attention(q, k)  # the softmax is a call away


torch.fx.wrap("_wrapped_attention")


class _WrappedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _wrapped_attention(self.q(x), self.k(x))


def test_a_softmax_inside_fx_wrapped_code_counts():
    assert attention_logits.reads_logits(_WrappedAttention().eval())
