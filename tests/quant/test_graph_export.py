"""Graph mode through torch.export (``mixq.quant.graph_export``): Hugging Face models torch.fx cannot trace get
integer attention MatMuls, one quantize per tensor and float outputs where no integer kernel reads them, and the
PyTorch model computes what ONNX Runtime computes at every batch size and sequence length."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import fx

import mixq
from mixq.quant.modules import FloatMatMul, QuantizedMatMul

transformers = pytest.importorskip("transformers")
LAYERS = 2


def _bert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    return transformers.BertModel(config).eval()


def _batch(batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, seq // 2:] = 0  # one padded row: the mask path is exercised too
    return {"input_ids": torch.randint(0, 100, (batch, seq), generator=g), "attention_mask": mask}


@pytest.fixture(scope="module")
def bert_static(reduce_range):
    bert = _bert()
    calib = [_batch(4, 12, seed) for seed in range(6)]
    return bert, mixq.quantize(bert, "static", calib_data=calib, reduce_range=reduce_range, progress=False)


def test_bert_takes_the_export_path_with_integer_attention(bert_static):
    bert, qmodel = bert_static
    assert isinstance(qmodel, type(bert)) and qmodel.config.hidden_size == bert.config.hidden_size
    notes = " ".join(qmodel.mixq_summary.notes)
    assert "torch.fx could not trace" in notes and "graph mode (torch.export)" in notes
    assert "eager implementation" in notes  # sdpa -> eager, so the MatMuls exist
    matmuls = [r for r in qmodel.mixq_summary.quantized if r.kind == "matmul"]
    assert len(matmuls) == 2 * LAYERS
    assert sum(isinstance(m, QuantizedMatMul) for m in qmodel.modules()) == 2 * LAYERS
    with torch.no_grad():
        x = _batch(3, 9, seed=99)
        ref, out = bert(**x).last_hidden_state, qmodel(**x).last_hidden_state
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.999


def test_bert_matches_onnx_runtime_at_any_shape(bert_static, tmp_path, ort_run):
    _, qmodel = bert_static
    path = mixq.export_onnx(qmodel, _batch(2, 8), tmp_path / "bert.onnx")
    for batch, seq in [(1, 5), (3, 17)]:
        x = _batch(batch, seq, seed=seq)
        (hidden, *_) = ort_run(path, **x)
        with torch.no_grad():
            sim = qmodel(**x).last_hidden_state.numpy()
        # integer kernels with float outputs: ORT and PyTorch differ by float rounding only
        assert np.abs(hidden - sim).max() <= 1e-4


def test_bert_graph_has_one_quantize_per_tensor_and_only_integer_matmuls(bert_static, tmp_path):
    _, qmodel = bert_static
    ops = mixq.optimized_op_types(mixq.export_onnx(qmodel, _batch(2, 8), tmp_path / "bert.onnx"))
    linears = 6 * LAYERS + 1  # q, k, v, attention output, FFN in, FFN out per layer + pooler
    assert ops["MatMulIntegerToFloat"] == linears + 2 * LAYERS, ops
    assert not {"MatMul", "FusedMatMul", "Gemm", "DequantizeLinear"} & set(ops), ops
    # per layer: the LayerNorm output (read by q, k, v), q, k and v, the probabilities, the attention context, the
    # second LayerNorm output, the GELU output; plus the pooler's input
    assert ops["QuantizeLinear"] == 8 * LAYERS + 1, ops


def test_attention_scale_is_folded_into_the_qk_matmul(bert_static, tmp_path):
    import onnx

    _, qmodel = bert_static
    head_dim = 32 // 2
    alphas = sorted(m.alpha for m in qmodel.modules() if isinstance(m, QuantizedMatMul))
    assert alphas == sorted([head_dim ** -0.5] * LAYERS + [1.0] * LAYERS)  # Q·Kᵀ scaled, probabilities·V not
    assert "2 constant factors" in " ".join(qmodel.mixq_summary.notes)
    graph = onnx.load(str(mixq.export_onnx(qmodel, _batch(2, 8), tmp_path / "bert.onnx"))).graph
    products = {n.output[0] for n in graph.node if n.op_type == "MatMulIntegerToFloat"}
    assert not [n for n in graph.node if n.op_type in ("Mul", "Div") and set(n.input) & products]


def test_excluding_an_attention_module_keeps_its_matmuls_float(reduce_range):
    bert = _bert()
    qmodel = mixq.quantize(bert, "static", calib_data=[_batch(4, 12)], reduce_range=reduce_range, progress=False,
                           exclude=["encoder.layer.0.attention.self"])
    quantized = {r.name for r in qmodel.mixq_summary.quantized if r.kind == "matmul"}
    assert quantized == {f"encoder.layer.1.attention.self.mixq_matmul_{k}" for k in (0, 1)}
    floats = {n: m.alpha for n, m in qmodel.named_modules() if isinstance(m, FloatMatMul)}
    layer0 = "encoder.layer.0.attention.self.mixq_matmul_"
    assert floats == {f"{layer0}0": 16 ** -0.5, f"{layer0}1": 1.0}  # float MatMuls keep the folded 1/√d
    a, b = torch.randn(2, 3, 5), torch.randn(2, 5, 4)
    assert torch.equal(FloatMatMul(16 ** -0.5)(a, b), (a @ b) * 16 ** -0.5)  # the model's own float Mul


def _llama(use_cache: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      bos_token_id=0, eos_token_id=0, pad_token_id=0, use_cache=use_cache)
    return transformers.LlamaForCausalLM(config).eval()


def test_a_decoder_that_returns_a_cache_stays_layer_by_layer_and_can_generate():
    llama = _llama(use_cache=True)
    calib = [{"input_ids": torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))}]
    qmodel = mixq.quantize(llama, "static", calib_data=calib, progress=False)
    assert isinstance(qmodel, transformers.LlamaForCausalLM)
    assert "use_cache = False" in " ".join(qmodel.mixq_summary.notes)
    assert qmodel.generate(calib[0]["input_ids"][:1, :4], max_new_tokens=2, do_sample=False).shape == (1, 6)


def test_a_decoder_without_cache_gets_graph_mode(tmp_path, ort_run, reduce_range):
    llama = _llama(use_cache=False)
    calib = [{"input_ids": torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(s))}
             for s in range(3)]
    qmodel = mixq.quantize(llama, "static", calib_data=calib, reduce_range=reduce_range, progress=False)
    assert type(qmodel) is type(llama) and isinstance(qmodel.model.graph, fx.Graph)  # its base model is the graph
    assert len([r for r in qmodel.mixq_summary.quantized if r.kind == "matmul"]) == 2 * 2
    assert "float output" in next(r.detail for r in qmodel.mixq_summary.quantized if r.name == "lm_head")
    path = mixq.export_onnx(qmodel, calib[0], tmp_path / "llama.onnx")
    ids = torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(7))
    (logits, *_) = ort_run(path, input_ids=ids)
    with torch.no_grad():
        sim = qmodel(input_ids=ids).logits.numpy()
        ref = llama(input_ids=ids).logits
    assert np.abs(logits - sim).max() <= 1e-4
    assert torch.nn.functional.cosine_similarity(ref.flatten(), torch.from_numpy(sim).flatten(), dim=0) > 0.999


class _ShapeBranchingResidual(torch.nn.Module):
    """Python control flow on a shape (torch.fx cannot trace it; torch.export can) and a residual add whose sum
    an integer layer reads: the add is quantized."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if x.shape[-1] == 8:  # a shape test: fx sees a Proxy, export a static shape
            h = h + torch.relu(self.b(h))
        return self.head(h)


def test_a_residual_add_an_integer_layer_reads_is_quantized_through_torch_export(tmp_path, ort_run, reduce_range):
    torch.manual_seed(0)
    model = _ShapeBranchingResidual().eval()
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(16, 8, generator=g) for _ in range(4)]
    qmodel = mixq.quantize(model, "static", calib_data=calib, reduce_range=reduce_range, progress=False)
    assert isinstance(qmodel, type(model)) and isinstance(qmodel.graph, fx.Graph)
    assert [r.kind for r in qmodel.mixq_summary.quantized].count("add") == 1
    path = mixq.export_onnx(qmodel, calib[0], tmp_path / "residual.onnx")
    ops = mixq.optimized_op_types(path)
    assert ops["QLinearAdd"] == 1 and "Add" not in ops, ops
    x = torch.randn(5, 8, generator=g)
    (out,) = ort_run(path, x)
    with torch.no_grad():
        sim = qmodel(x).numpy()
    assert np.abs(out - sim).max() <= 1e-5


def _tokens(batch: int, seq: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 100, (batch, seq), generator=g),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


def _pixels(batch: int, seq: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=g)}


ARCHITECTURES = {
    "roberta": (lambda: transformers.RobertaModel(transformers.RobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64)), _tokens),
    "distilbert": (lambda: transformers.DistilBertModel(transformers.DistilBertConfig(
        vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64)), _tokens),
    "vit": (lambda: transformers.ViTModel(transformers.ViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64)), _pixels),
}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_other_encoders_get_integer_attention_and_match_onnx_runtime(name, tmp_path, ort_run, reduce_range):
    make, data = ARCHITECTURES[name]
    torch.manual_seed(0)
    model, g = make().eval(), torch.Generator().manual_seed(0)
    calib = [data(2, 10, g) for _ in range(3)]
    qmodel = mixq.quantize(model, "static", calib_data=calib, reduce_range=reduce_range, progress=False)
    assert isinstance(qmodel, type(model)) and isinstance(qmodel.graph, fx.Graph)
    assert sum(r.kind == "matmul" for r in qmodel.mixq_summary.quantized) == 2
    path = mixq.export_onnx(qmodel, calib[0], tmp_path / f"{name}.onnx")
    x = data(3, 7, g)
    (hidden, *_) = ort_run(path, **x)
    with torch.no_grad():
        sim = qmodel(**x).last_hidden_state.numpy()
    assert np.abs(hidden - sim).max() <= 1e-4


def test_a_layer_called_through_a_twin_with_its_tied_weight_is_restored():
    """T5-style tying: ``shared`` and ``encoder.embed_tokens`` are two Embedding modules holding one weight, and the
    model calls only the second. The capture puts the planned layer (``shared``) where its twin is called."""
    from mixq.quant.graph_export import export_graph

    class Encoder(torch.nn.Module):
        def __init__(self, shared: torch.nn.Embedding) -> None:
            super().__init__()
            self.embed_tokens = torch.nn.Embedding(50, 16)
            self.embed_tokens.weight = shared.weight
            self.fc = torch.nn.Linear(16, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.fc(self.embed_tokens(ids))

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = torch.nn.Embedding(50, 16)
            self.encoder = Encoder(self.shared)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.encoder(ids)

    torch.manual_seed(0)
    model = Tied().eval()
    ids = torch.randint(0, 50, (2, 7))
    gm, why, left = export_graph(model, ids, ["shared", "encoder.fc"])
    assert gm is not None and not left, why
    called = [n.target for n in gm.graph.nodes if n.op == "call_module" and n.target != "_guards_fn"]
    assert called == ["shared", "encoder.fc"]
    assert torch.equal(gm(ids), model(ids))
    model.encoder.embed_tokens = torch.nn.Embedding(50, 16, padding_idx=0)  # no longer a twin: another weight
    gm, why, left = export_graph(model, ids, ["shared", "encoder.fc"])
    assert left == {"shared": "the captured graph never calls it"}  # stays float; the model never uses it


def test_a_layer_whose_weight_is_read_directly_stays_float_in_graph_mode():
    """DeBERTa-v2 reads its relative-position table as ``rel_embeddings.weight`` instead of calling the Embedding:
    graph mode keeps that layer float (it computes as the model does) and quantizes the rest."""
    from mixq.quant.graph_export import export_graph

    class ReadsTable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Embedding(8, 16)
            self.fc = torch.nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) @ self.table.weight.T

    torch.manual_seed(0)
    model, x = ReadsTable().eval(), torch.randn(3, 5, 16)
    gm, why, left = export_graph(model, x, ["table", "fc"])
    assert gm is not None, why
    assert left == {"table": "the captured graph reads its weight directly instead of calling it as one layer"}
    assert torch.equal(gm(x), model(x))
