"""A key/value-cache decoder in LiteRT: greedy generation through the ``.tflite`` equals the PyTorch model it
stands for (mixq's weight-only simulation), with mixq's integer codes in the file; what it cannot hold is refused
before any conversion."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch", reason="the LiteRT extra is not installed: pip install 'mixq[litert]'")
transformers = pytest.importorskip("transformers")

import mixq  # noqa: E402
from mixq.export.tflite.weight_only import WeightOnlyWeights  # noqa: E402

VOCAB = 96


def _llama(steps: int = 0) -> torch.nn.Module:
    """A tiny Llama (grouped-query attention); with ``steps``, trained on ``next = (7 * token + 3) % VOCAB``.

    A random model's logits are nearly flat, so LiteRT's int8 rounding of activations (its integer-weight kernels
    quantize them per row; mixq's simulation keeps them float) flips near-ties; a trained model's are not."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    lm = transformers.LlamaForCausalLM(config)
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.randint(0, VOCAB, (16, 1))
        for _ in range(15):
            x = torch.cat([x, (7 * x[:, -1:] + 3) % VOCAB], dim=1)
        loss = lm(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lm.eval()


@pytest.fixture(scope="module")
def int4(tmp_path_factory) -> tuple[torch.nn.Module, object]:
    """A tiny random Llama (grouped-query attention), GPTQ w4 g32, and its decoder file (prefill of 8 tokens)."""
    calib = [torch.randint(0, VOCAB, (2, 24)) for _ in range(3)]
    qlm = mixq.quantize(_llama(steps=60), "weight_only", bits=4, group_size=32, method="gptq", calib_data=calib,
                        progress=False)
    path = tmp_path_factory.mktemp("int4") / "decoder.tflite"
    return qlm, mixq.export_decoder_tflite(qlm, path, cache_len=48, prefill_len=8)


def _file_weights(path) -> list[tuple[str, np.ndarray]]:
    """(type, stored bytes) of every FULLY_CONNECTED weight in the file's decode signature."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    graph, out = model.subgraphs[0], []
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    for op in graph.operators:
        if codes[op.opcodeIndex] == schema.BuiltinOperator.FULLY_CONNECTED:
            t = graph.tensors[op.inputs[1]]
            out.append((types[t.type], np.asarray(model.buffers[t.buffer].data, dtype=np.uint8)))
    return out


@pytest.mark.nightly  # one decoder conversion: ~1 min on 2 cores
def test_int4_decoder_generates_the_same_tokens_as_the_simulation(int4):
    qlm, path = int4
    torch.manual_seed(1)
    prompt = torch.randint(0, VOCAB, (2, 11))  # longer than the prefill: two chunks, the second padded
    expected = mixq.generate_torch(qlm, prompt, max_new_tokens=12)
    assert torch.equal(mixq.generate_tflite(path, prompt, max_new_tokens=12), expected)


@pytest.mark.nightly  # one decoder conversion: ~1 min on 2 cores
def test_a_left_padded_row_generates_what_its_prompt_does_alone(int4):
    qlm, path = int4
    prompt = torch.tensor([[0, 0, 5, 17, 33], [4, 8, 15, 16, 23]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    got = mixq.generate_tflite(path, prompt, max_new_tokens=6, attention_mask=mask)
    alone = mixq.generate_tflite(path, prompt[:1, 2:], max_new_tokens=6)
    assert torch.equal(got[0, 2:], alone[0])
    assert torch.equal(got, mixq.generate_torch(qlm, prompt, max_new_tokens=6, attention_mask=mask))


@pytest.mark.nightly  # one decoder conversion: ~1 min on 2 cores
def test_the_file_holds_mixqs_int4_codes_bit_for_bit(int4):
    from ai_edge_quantizer.transformations import transformation_utils

    from mixq.export.tflite.lowering import lower

    qlm, path = int4
    lowered, _ = lower(qlm)
    layers = [m for m in lowered.modules() if isinstance(m, WeightOnlyWeights)]
    assert len(layers) == 15  # 7 per block + lm_head
    packed = {transformation_utils.pack_data(4, m.codes.numpy().view(np.uint8)).tobytes() for m in layers}
    stored = _file_weights(path)
    assert len(stored) == 15 and all(kind == "INT4" for kind, _ in stored)
    assert {data.tobytes() for _, data in stored} == packed


@pytest.mark.nightly  # one decoder conversion: ~1 min on 2 cores
def test_signatures_and_cache_layout(int4):
    from mixq.export.tflite.decoder_run import TFLiteDecoderSession

    session = TFLiteDecoderSession(int4[1])
    assert (session.prefill_len, session.cache_len, session.vocab) == (8, 48, VOCAB)
    assert session.cache_shape == (1, 2, 48, 16) and len(session.names) == 4  # 2 layers x key, value


@pytest.mark.nightly
@pytest.mark.parametrize(("ids", "new", "message"), [
    (torch.tensor([[1, VOCAB]]), 2, "outside the vocabulary"),
    (torch.ones(1, 40, dtype=torch.long), 9, "cache of 48 positions"),
    (torch.ones(1, 3, dtype=torch.long), 0, "max_new_tokens must be >= 1"),
])
def test_generate_refuses_before_running(int4, ids, new, message):
    with pytest.raises(ValueError, match=message):
        mixq.generate_tflite(int4[1], ids, new)


def test_generate_refuses_a_file_that_is_not_a_decoder(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    path = mixq.export_tflite(model, torch.randn(1, 4), tmp_path / "mlp.tflite")
    with pytest.raises(ValueError, match="not a key/value-cache decoder"):
        mixq.generate_tflite(path, torch.ones(1, 2, dtype=torch.long), 2)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"bits": 4, "group_size": 16}, "group size 16"),
    ({"bits": 4, "group_size": 32, "symmetric": False}, "zero points"),
    ({"bits": 8, "group_size": 32}, "8-bit groups"),
])
def test_layers_litert_cannot_hold_are_refused_before_conversion(tmp_path, kwargs, message):
    qlm = mixq.quantize(_llama(), "weight_only", progress=False, **kwargs)
    with pytest.raises(mixq.ExportError, match=f"layer 'model.layers.0.self_attn.q_proj' .*{message}"):
        mixq.export_decoder_tflite(qlm, tmp_path / "lm.tflite")
    assert not (tmp_path / "lm.tflite").exists()


def test_sizes_past_the_model_positions_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cache_len=256 runs past the model's 128 positions"):
        mixq.export_decoder_tflite(_llama(), tmp_path / "lm.tflite", cache_len=256)
    with pytest.raises(ValueError, match="prefill_len=64 is longer than the cache"):
        mixq.export_decoder_tflite(_llama(), tmp_path / "lm.tflite", cache_len=32, prefill_len=64)


@pytest.mark.nightly
@pytest.mark.parametrize("bits", [8, None], ids=["int8", "fp32"])
def test_int8_and_float_decoders_generate_the_same_tokens(tmp_path, bits):
    lm = _llama(steps=60)
    qlm = mixq.quantize(lm, "weight_only", bits=8, progress=False) if bits else lm
    path = mixq.export_decoder_tflite(qlm, tmp_path / "lm.tflite", cache_len=32, prefill_len=8)
    if bits:
        assert [kind for kind, _ in _file_weights(path)] == ["INT8"] * 15
    prompt = torch.randint(0, VOCAB, (1, 6))
    assert torch.equal(mixq.generate_tflite(path, prompt, 10), mixq.generate_torch(qlm, prompt, 10))


def _random_int4(hidden: int = 512, runtime: str | None = None) -> torch.nn.Module:
    """An untrained 2-layer Llama (hidden ``hidden``), RTN int4 in groups of 32: its int8 embedding rows, normalized,
    put many of the first layer's inputs on XNNPACK's rounding ties."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128)
    return mixq.quantize(transformers.LlamaForCausalLM(config).eval(), "weight_only", bits=4, group_size=32,
                         runtime=runtime, progress=False)


def test_last_bit_changes_move_the_row_rounded_decoder_past_the_tolerance():
    """Why a decoder file is not checked step for step against mixq's row-rounded model: moving that model's
    activations by 1e-7 relative (the last bit, as LiteRT's RMSNorm differs from PyTorch's) flips rounding ties,
    and two layers later its logits are more than TOLERANCE away from where they were."""
    from mixq.export.tflite.check import TOLERANCE, disagreement
    from mixq.export.tflite.lowering import lower
    from mixq.export.tflite.weight_only import row_quantized_activations

    lowered = lower(_random_int4())[0]
    ids = torch.arange(3, 8)[None]
    with row_quantized_activations(lowered), torch.no_grad():
        rounded = lowered(ids).logits.numpy()
        hooks = [m.register_forward_pre_hook(lambda m, a: (a[0] * (1 + 1e-7 * (2 * torch.rand(a[0].shape) - 1)),),
                                             prepend=True)  # before the rounding
                 for m in lowered.modules() if isinstance(m, WeightOnlyWeights)]
        moved = lowered(ids).logits.numpy()
        for h in hooks:
            h.remove()
    assert disagreement(moved, rounded) > TOLERANCE


@pytest.mark.nightly  # one decoder conversion: ~30 s on 2 cores
@pytest.mark.parametrize("runtime", [None, "litert"], ids=["for-ort", "for-litert"])
def test_a_decoder_whose_rounding_ties_fall_apart_exports_and_a_wrong_one_is_refused(tmp_path, runtime):
    """A 2-layer int4 decoder that LiteRT runs correctly but whose last-bit float differences flip rounding ties:
    refused before (2.1% RMS off the row-rounded model, tolerance 1.6%); exported now, also when quantized for
    LiteRT (~2% off that model, which moves ~3% when its activations move in the last bit). The same check still
    refuses the file against a model with one layer's weights negated."""
    from mixq.export.errors import ExportError
    from mixq.export.tflite.decoder import check_decoder
    from mixq.export.tflite.lowering import lower

    qlm = _random_int4(runtime=runtime)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        path = mixq.export_decoder_tflite(qlm, tmp_path / "lm.tflite", cache_len=32, prefill_len=8)
    warned = any("quantized for ONNX Runtime" in str(w.message) for w in said)
    assert warned == (runtime is None)  # the file rounds rows the model quantized for ONNX Runtime does not
    wrong = lower(qlm)[0]
    wrong.model.layers[1].mlp.down_proj.weight.neg_()
    with pytest.raises(ExportError, match="relative RMS off mixq's weights at float activations"):
        check_decoder(path.read_bytes(), qlm, wrong)


@pytest.mark.nightly  # one decoder conversion: ~30 s on 2 cores
def test_a_decoder_quantized_for_litert_is_checked_against_the_simulation_itself(tmp_path):
    """Quantized for LiteRT (bfloat16 block scales, input rows rounded as XNNPACK rounds them), mixq's model is the
    file's arithmetic: the file's logits are within float32 rounding of it (a model at float activations is a
    percent or two off) and its greedy tokens are the file's. The check then compares the file with that model
    itself, so a model with one layer negated is refused even though the file matches its lowered weights."""
    import copy

    from mixq.export.errors import ExportError
    from mixq.export.tflite.decoder import _logits, check_decoder, computes_as_litert
    from mixq.export.tflite.decoder_run import TFLiteDecoderSession
    from mixq.export.tflite.lowering import lower

    qlm = mixq.quantize(_llama(steps=60), "weight_only", bits=4, group_size=32, runtime="litert", progress=False)
    assert computes_as_litert(qlm)
    path = mixq.export_decoder_tflite(qlm, tmp_path / "lm.tflite", cache_len=32, prefill_len=8)
    lowered = lower(qlm)[0]
    assert check_decoder(path.read_bytes(), qlm, lowered) <= 1e-5
    prompt = torch.arange(3, 8)[None]
    file_logits = TFLiteDecoderSession(path).prefill(prompt[0].tolist())
    float_activations = _logits(lowered, prompt, 0)[0]
    assert np.linalg.norm(file_logits - float_activations) > 1e-3 * np.linalg.norm(float_activations)
    prompt = torch.randint(0, VOCAB, (2, 11))
    assert torch.equal(mixq.generate_tflite(path, prompt, 12), mixq.generate_torch(qlm, prompt, 12))
    wrong = copy.deepcopy(qlm)
    wrong.model.layers[1].mlp.down_proj.scales.neg_()
    with pytest.raises(ExportError, match="off mixq's model, which computes as LiteRT does"):
        check_decoder(path.read_bytes(), wrong, lowered)
