"""A Hugging Face BERT encoder (small random config): dynamic int8 Linear layers, exported, integer MatMuls in ORT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mixq
from mixq.export import INTEGER_KERNELS

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=256, max_position_embeddings=512)
    return transformers.BertModel(config).eval()


def _inputs(batch: int, seq: int = 24, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 500, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq // 2:] = 0  # one padded sequence
    return {"input_ids": ids, "attention_mask": mask}


def test_dynamic_bert_exports_with_integer_matmuls(bert, tmp_path, ort_run, reduce_range):
    qmodel = mixq.quantize(bert, "dynamic", reduce_range=reduce_range)
    quantized = [r for r in qmodel.mixq_summary.quantized if r.kind == "Linear"]
    assert len(quantized) == 2 * 6 + 1  # q, k, v, attention out, intermediate, output per layer + pooler
    tables = [r.name for r in qmodel.mixq_summary.quantized if r.kind == "Embedding"]
    assert len(tables) == 3  # word, position and token-type tables are int8 too

    path = mixq.export_onnx(qmodel, _inputs(2), tmp_path / "bert_int8.onnx")
    ops = mixq.optimized_op_types(path)
    assert sum(ops[k] for k in INTEGER_KERNELS) == len(quantized), ops
    # the only float MatMuls left are attention's activation x activation products (2 per layer)
    assert ops["MatMul"] + ops["FusedMatMul"] == 2 * 2 and ops["Gemm"] == 0, ops

    for batch, seq in [(5, 24), (1, 8), (8, 64), (2, 300)]:  # one file: symbolic batch and sequence
        inputs = _inputs(batch, seq, seed=1)
        ort_hidden, ort_pooled = ort_run(path, **inputs)
        with torch.no_grad():
            sim = qmodel(**inputs)
            ref = bert(**inputs)
        assert np.abs(ort_pooled - sim.pooler_output.numpy()).max() <= 1e-4
        assert np.abs(ort_hidden - sim.last_hidden_state.numpy()).max() <= 1e-3
        cosine = torch.nn.functional.cosine_similarity(torch.from_numpy(ort_pooled), ref.pooler_output, dim=-1)
        assert cosine.min().item() >= 0.99


def test_dynamic_bert_is_smaller(bert, tmp_path):
    fp32 = mixq.export_onnx(bert, _inputs(2), tmp_path / "fp32.onnx")
    int8 = mixq.export_onnx(mixq.quantize(bert, "dynamic"), _inputs(2), tmp_path / "int8.onnx")
    assert int8.stat().st_size < 0.35 * fp32.stat().st_size  # tiny config: LayerNorm/bias/scales weigh more


def test_dynamic_bert_attention_has_no_nan_guard_and_layernorms_stay_unfused(bert, tmp_path, ort_run):
    import onnx

    qmodel = mixq.quantize(bert, "dynamic")
    assert any("no NaN guard" in note for note in qmodel.mixq_summary.notes)  # sdpa -> eager, said so
    path = mixq.export_onnx(qmodel, _inputs(2), tmp_path / "bert_int8.onnx")
    graph = onnx.load(str(path)).graph
    softmax = {n.output[0] for n in graph.node if n.op_type == "Softmax"}
    assert len(softmax) == 2
    assert not [n for n in graph.node if n.op_type == "IsNaN" or (n.op_type == "Where" and set(n.input) & softmax)]
    ops = mixq.optimized_op_types(path, "ORT_ENABLE_ALL")  # what a plain session runs
    assert "SkipLayerNormalization" not in ops and ops["LayerNormalization"] == 1 + 2 * 2, ops
    # the guard's job, kept: a row with every key masked stays finite (eager attention's mask is finite)
    inputs = _inputs(3, 10, seed=2)
    inputs["attention_mask"][1] = 0
    hidden, pooled = ort_run(path, **inputs)
    assert np.isfinite(hidden).all() and np.isfinite(pooled).all()
    with torch.no_grad():
        sim = qmodel(**inputs)
    assert np.abs(hidden - sim.last_hidden_state.numpy()).max() <= 1e-3
