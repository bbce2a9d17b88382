"""QAT on a Hugging Face BERT encoder (small random config): torch.fx cannot trace it, so QAT wraps each Linear and
embedding table; the converted model equals the QAT model in eval mode, exports with integer MatMuls and int8
tables, and its file is as small as post-training quantization's."""

from __future__ import annotations

import onnx
import pytest
import torch

import mixq
from mixq.export import INTEGER_KERNELS

transformers = pytest.importorskip("transformers")


def test_bert_qat_converts_exactly_and_exports_integer_matmuls(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=32)
    bert = transformers.BertModel(config).eval()
    ids = torch.randint(0, 200, (4, 16), generator=torch.Generator().manual_seed(0))
    qat = mixq.prepare_qat(bert, example_inputs={"input_ids": ids})
    assert len(qat.mixq_qat_plan.quantized) == 2 * 6 + 1 + 3  # Linears + word/position/token-type tables
    opt = torch.optim.Adam(qat.parameters(), lr=1e-4)
    qat.train()
    for _ in range(2):
        opt.zero_grad()
        qat(input_ids=ids).pooler_output.pow(2).mean().backward()
        opt.step()
    qmodel = mixq.convert(qat.eval())
    with torch.no_grad():
        out, ref = qmodel(input_ids=ids).pooler_output, qat(input_ids=ids).pooler_output
        assert torch.equal(out, ref)
        float_out = bert(input_ids=ids).pooler_output
    assert torch.nn.functional.cosine_similarity(out.flatten(), float_out.flatten(), dim=0) > 0.98
    path = mixq.export_onnx(qmodel, {"input_ids": ids}, tmp_path / "bert_qat.onnx")
    ops = mixq.optimized_op_types(path)
    # 13 Linears, and Q·Kᵀ of both layers: QAT runs attention eagerly (as PTQ does), so that MatMul reads two
    # DequantizeLinear outputs, which ONNX Runtime runs as MatMulIntegerToFloat
    assert sum(ops[k] for k in INTEGER_KERNELS) == 15, ops
    tables = [r for r in qmodel.mixq_summary.quantized if r.kind == "Embedding"]
    assert len(tables) == 3 and all("int8 table" in r.detail for r in tables)
    fp32 = mixq.export_onnx(bert, {"input_ids": ids}, tmp_path / "bert_fp32.onnx")
    assert _weight_bytes(path) <= 0.3 * _weight_bytes(fp32)  # the graph's own bytes dominate at this tiny size
    ptq = mixq.quantize(bert, "static", calib_data=[{"input_ids": ids}], progress=False)
    ptq_path = mixq.export_onnx(ptq, {"input_ids": ids}, tmp_path / "bert_ptq.onnx")
    # was 2.5x when QAT left tables float; PTQ's torch.export graph mode has fewer Q/DQ nodes than QAT's layers
    assert path.stat().st_size <= 1.25 * ptq_path.stat().st_size


def _weight_bytes(path) -> int:
    return sum(len(t.raw_data) for t in onnx.load(str(path)).graph.initializer)
