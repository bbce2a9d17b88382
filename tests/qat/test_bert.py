"""QAT on a Hugging Face BERT encoder (small random config): torch.fx cannot trace it, so QAT captures it with
torch.export in training mode (graph mode, as static quantization): each Linear and embedding table and attention's
two MatMuls train fake-quantized; the converted model equals the QAT model in eval mode, exports with integer
MatMuls and int8 tables, and its file is as small as post-training quantization's."""

from __future__ import annotations

import numpy as np
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
    # Linears + word/position/token-type tables + Q·Kᵀ and probabilities·V of both layers
    assert len(qat.mixq_qat_plan.quantized) == 2 * 6 + 1 + 3 + 2 * 2
    assert isinstance(qat, transformers.BertModel) and qat.config.hidden_size == 64  # the class and its config
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
    # 13 Linears, and Q·Kᵀ and probabilities·V of both layers (graph mode's integer attention)
    assert sum(ops[k] for k in INTEGER_KERNELS) == 17, ops
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


def test_a_task_model_trains_with_labels_through_its_captured_base_model(tmp_path, ort_run):
    """BertForSequenceClassification: QAT captures its ``bert`` (graph mode, integer attention), while the head and
    its loss stay the model's own Python, so a training loop passes ``labels`` as usual; the converted model keeps
    its class and computes what ONNX Runtime computes from its file."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=3)
    model = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(3, 100, (16, 8), generator=torch.Generator().manual_seed(1))
    labels = ids[:, 1] % 3
    qat = mixq.prepare_qat(model, example_inputs={"input_ids": ids[:2]})
    assert any("captured its bert (BertModel" in n for n in qat.mixq_qat_plan.notes), qat.mixq_qat_plan.notes
    assert isinstance(qat, transformers.BertForSequenceClassification)
    assert isinstance(qat.bert, transformers.BertModel) and type(qat.bert) is not transformers.BertModel
    opt = torch.optim.Adam(qat.parameters(), lr=3e-3)
    qat.train()
    query = qat.get_submodule("bert.encoder.layer.0.attention.self.query")
    before = query.layer.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        qat(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    assert not torch.equal(before, query.layer.weight)
    qmodel = mixq.convert(qat.eval())
    matmuls = [r.name for r in qmodel.mixq_summary.quantized if r.kind == "matmul"]
    assert matmuls == [f"bert.encoder.layer.{i}.attention.self.mixq_matmul_{k}" for i in range(2) for k in range(2)]
    with torch.no_grad():
        sim = qmodel(input_ids=ids).logits
        assert torch.equal(sim, qat(input_ids=ids).logits)
    path = mixq.export_onnx(qmodel, {"input_ids": ids[:2]}, tmp_path / "bert_cls_qat.onnx")
    np.testing.assert_allclose(ort_run(path, input_ids=ids)[0], sim.numpy(), atol=1e-5)


def test_t5_attention_too_sharp_for_int8_stays_float_in_graph_mode_qat():
    """T5 has no 1/sqrt(d): one int8 step of q or k moves its logits by >10 nats, so those projections stay float
    (the attention-logit rule), and so does the Q·Kᵀ MatMul reading them, which would round them after all; the
    probabilities·V MatMul trains fake-quantized. The same layers as static graph mode keeps float."""
    from mixq.quant.modules import FloatMatMul, QuantizedMatMul
    from tests.zoo.cases import CASES

    case = {c.name: c for c in CASES}["t5-encoder"]
    model, calib = case.build(), [case.inputs(0, seed) for seed in range(3)]
    qat = mixq.prepare_qat(model, example_inputs=calib[0])
    floats = {r.name: r.detail for r in qat.mixq_qat_plan.layers if r.status == "float"}
    for block in range(2):
        attention = f"encoder.block.{block}.layer.0.SelfAttention"
        assert "nats" in floats[f"{attention}.q"] and "nats" in floats[f"{attention}.k"]
        assert f"reads {attention}." in floats[f"{attention}.mixq_matmul_0"]
        assert f"{attention}.mixq_matmul_1" not in floats
    static = mixq.quantize(model, "static", calib_data=calib, progress=False)
    qat.train()
    for batch in calib:
        qat(**batch)
    converted = mixq.convert(qat.eval())
    for name, m in static.named_modules():
        if isinstance(m, (FloatMatMul, QuantizedMatMul)):
            assert type(converted.get_submodule(name)) is type(m), name
