"""A tiny random BERT to ``.tflite`` the way a new user tries it: dict example inputs (token ids and attention
mask), ``mode="dynamic"`` (int8 embeddings included) and ``mode="fp16"``, checked against mixq's simulation."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("litert_torch", reason="the LiteRT extra is not installed: pip install 'mixq[litert]'")
transformers = pytest.importorskip("transformers")

import mixq  # noqa: E402
from mixq.export.tflite.check import TOLERANCE, disagreement, file_outputs, named_outputs  # noqa: E402

LAYERS = 2  # query, key, value, output, intermediate, output per layer, plus the pooler


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    example = {"input_ids": torch.randint(0, 100, (1, 8)), "attention_mask": torch.ones(1, 8, dtype=torch.long)}
    example["attention_mask"][0, 6:] = 0
    return transformers.BertModel(config).eval(), example


@pytest.mark.parametrize("mode", ["dynamic", "fp16"])
def test_tiny_bert_exports_and_agrees_with_the_simulation(bert, tmp_path, mode):
    model, example = bert
    qmodel = mixq.quantize(model, mode, example_inputs=example)
    path = mixq.export_tflite(qmodel, example, tmp_path / f"bert_{mode}.tflite")
    info = mixq.inspect_tflite(path)
    fcs = [op for op in info.ops if op.op_type == "FULLY_CONNECTED"]
    assert len(fcs) == 6 * LAYERS + 1, info.op_types
    if mode == "dynamic":
        assert all(op.input_types[1] == "int8" for op in fcs), info
        assert any(op.input_types[:1] == ("int8",) for op in info.ops if op.op_type.startswith("GATHER")), info
        stored = qmodel.embeddings.word_embeddings.qweight.numel() + sum(
            m.weight_t.numel() for m in qmodel.modules() if type(m).__name__ == "DynamicQuantizedLinear")
        assert info.size_by_dtype["int8"]["bytes"] >= stored, info.size_by_dtype  # the table and weights as int8
    else:
        assert sum(op.op_type == "DEQUANTIZE" and op.input_types == ("float16",) for op in info.ops) == len(fcs)
    got = file_outputs(path.read_bytes(), example)  # inputs by name through the file's signature
    with torch.no_grad():
        want = named_outputs(qmodel(**example))
    assert set(got) == {"last_hidden_state", "pooler_output"}
    errors = {name: disagreement(got[name], want[name]) for name in want}
    assert max(errors.values()) <= (TOLERANCE if mode == "dynamic" else 1e-4), errors
