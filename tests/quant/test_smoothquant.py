"""SmoothQuant: exact folds, fidelity restored on planted outliers, no extra ONNX ops, and refused input."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import mixq
from mixq.quant.smoothquant import candidate_groups, smooth, verify
from tests.quant.tiny_transformer import data, plant_outliers, trained


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return trained()


@pytest.fixture(scope="module")
def planted(tiny) -> nn.Module:
    model = copy.deepcopy(tiny)
    plant_outliers(model)
    return model


CALIB = [data(64, 2 + i)[0] for i in range(4)]
IDS = data(512, 1)[0]


def sqnr_db(model: nn.Module, reference: nn.Module) -> float:
    with torch.no_grad():
        ref, out = reference(IDS), model(IDS)
    return (10 * torch.log10(ref.pow(2).sum() / (out - ref).pow(2).sum())).item()


def test_planting_keeps_the_float_function(tiny, planted):
    assert sqnr_db(planted, tiny) > 100


@pytest.mark.parametrize("alpha", [0.5, "auto"], ids=["alpha0.5", "auto"])
def test_fold_is_exact(planted, alpha):
    smoothed, notes = smooth(planted, alpha, mixq.make_config("static"), CALIB[0], CALIB, progress=False)
    assert sqnr_db(smoothed, planted) > 100  # the float function is unchanged (float32 rounding only)
    assert smoothed.blocks[0].ln1.weight[3].abs() < planted.blocks[0].ln1.weight[3].abs() / 4  # outlier moved
    # pre-LN blocks: ln1 -> q/k/v, v -> o, ln2 -> fc1 and fc1 -> (ReLU) -> fc2 fold exactly
    assert notes and "ln1 -> q/k/v" in notes[0] and "v -> o" in notes[0] and "fc1 -> fc2" in notes[0]
    assert planted.blocks[0].ln1.weight[3].abs() > 10  # the input model is untouched


def test_verification_rejects_inexact_folds(planted):
    groups = {(g.producer, g.consumers) for g in candidate_groups(planted, CALIB[0])}
    assert ("blocks.0.ln1", ("blocks.0.q", "blocks.0.k", "blocks.0.v")) in groups
    kept = {(g.producer, g.consumers) for g in verify(planted, candidate_groups(planted, CALIB[0]), CALIB[0])}
    assert ("blocks.0.ln1", ("blocks.0.q", "blocks.0.k", "blocks.0.v")) in kept
    assert ("blocks.0.fc1", ("blocks.0.fc2",)) in kept  # through ReLU: positively homogeneous

    gelu = trained(steps=1, activation="gelu")  # fc1 -> GELU -> fc2 cannot be folded
    kept = {(g.producer, g.consumers) for g in verify(gelu, candidate_groups(gelu, CALIB[0]), CALIB[0])}
    assert ("blocks.0.fc1", ("blocks.0.fc2",)) not in kept
    assert ("blocks.0.ln1", ("blocks.0.q", "blocks.0.k", "blocks.0.v")) in kept


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_smoothquant_restores_int8_fidelity_on_outliers(tiny, planted, mode):
    clean = sqnr_db(mixq.quantize(tiny, mode, calib_data=CALIB, smoothquant=None, progress=False), tiny)
    plain = sqnr_db(mixq.quantize(planted, mode, calib_data=CALIB, smoothquant=None, progress=False), planted)
    assert plain < clean - 15  # the planted outliers ruin plain int8 ...
    for alpha in (0.5, "auto", "layernorm") if mode == "static" else (0.5, "auto"):  # "layernorm": static's default
        smoothed = sqnr_db(mixq.quantize(planted, mode, calib_data=CALIB, smoothquant=alpha, progress=False), planted)
        assert smoothed > plain + 15 and smoothed > clean - 3, (alpha, plain, smoothed, clean)  # ... SmoothQuant not
    auto = sqnr_db(mixq.quantize(tiny, mode, calib_data=CALIB, smoothquant="auto", progress=False), tiny)
    assert auto > clean - 2  # and "auto" does no harm on a model without outliers


def test_exported_graph_gains_only_the_unfoldable_groups_muls(planted, tmp_path):
    """Folded groups add no operator; a group that cannot fold puts one Mul before its static layer's input grid
    (a Linear paired by width with the last block's fc2, whose output also feeds the residual add)."""
    onnx = pytest.importorskip("onnx")
    ops, notes = [], []
    for alpha in (None, 0.5):
        qmodel = mixq.quantize(planted, "static", calib_data=CALIB, smoothquant=alpha, progress=False)
        path = mixq.export_onnx(qmodel, CALIB[0][:2], tmp_path / f"{alpha}.onnx")
        ops.append(sorted(n.op_type for n in onnx.load(str(path)).graph.node))
        notes.append(qmodel.mixq_summary.notes)
    inside = [n for n in notes[1] if n.startswith("smoothquant:")][0].count("in the int8 layer")
    assert [o for o in ops[1] if o != "Mul"] == [o for o in ops[0] if o != "Mul"]
    assert ops[1].count("Mul") - ops[0].count("Mul") == inside


def test_unfoldable_smoothing_keeps_the_float_function_and_matches_onnx(tmp_path):
    """Post-LN BERT (LayerNorms also feed residual adds, a GELU before the FFN's second Linear): the groups that
    cannot fold are smoothed inside their int8 layers, and the file computes what the simulation does."""
    transformers = pytest.importorskip("transformers")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32)
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()
    calib = [{"input_ids": torch.randint(0, 200, (4, 16)), "attention_mask": torch.ones(4, 16, dtype=torch.long)}
             for _ in range(2)]
    qmodel = mixq.quantize(bert, "static", calib_data=calib, smoothquant="auto", progress=False)
    note = [n for n in qmodel.mixq_summary.notes if n.startswith("smoothquant:")][0]
    assert "in the int8 layer" in note, note
    smoothed = [m for m in qmodel.modules() if getattr(m, "x_smooth", None) is not None]
    assert smoothed
    path = mixq.export_onnx(qmodel, calib[0], tmp_path / "bert.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: calib[1][i.name].numpy() for i in session.get_inputs()}
    with torch.no_grad():
        sim = qmodel(**calib[1])
        sim = sim.last_hidden_state if hasattr(sim, "last_hidden_state") else sim[0]
    got = torch.from_numpy(session.run(None, feeds)[0])
    assert torch.nn.functional.cosine_similarity(got.flatten(), sim.flatten(), dim=0) > 0.9999


def test_generator_calibration_is_read_twice(planted):
    qmodel = mixq.quantize(planted, "static", calib_data=(b for b in CALIB), smoothquant=0.5, progress=False)
    assert "smoothquant:" in qmodel.mixq_summary.notes[0]
    assert sqnr_db(qmodel, planted) > 30


def test_no_foldable_pair_warns_and_does_nothing():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    calib = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    with pytest.warns(UserWarning, match="no LayerNorm->Linear or Linear->Linear pair"):
        qmodel = mixq.quantize(model, "static", calib_data=calib, smoothquant=0.5, progress=False)
    reference = mixq.quantize(model, "static", calib_data=calib, progress=False)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(qmodel(x), reference(x))
    assert not any("smoothquant" in n for n in qmodel.mixq_summary.notes)


@pytest.mark.parametrize("alpha, error", [(-0.1, ValueError), (1.5, ValueError), ("fast", TypeError),
                                          (True, TypeError)], ids=["negative", "above1", "string", "bool"])
def test_bad_alpha_is_refused(planted, alpha, error):
    with pytest.raises(error, match="smoothquant"):
        mixq.quantize(planted, "static", calib_data=CALIB, smoothquant=alpha, progress=False)


def test_smoothquant_needs_int8_activations_and_data(planted):
    with pytest.raises(ValueError, match="static and dynamic"):
        mixq.quantize(planted, "fp16", calib_data=CALIB, smoothquant=0.5)
    with pytest.raises(ValueError, match="needs calib_data"):
        mixq.quantize(planted, "dynamic", smoothquant="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixq.quantize(planted, "dynamic", calib_data=CALIB, smoothquant=0.5, progress=False)


def test_post_ln_bert_smooths_only_value_to_output(tmp_path):
    """BERT's LayerNorm outputs also feed the residual adds and its FFN has a GELU: only V -> output folds."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32)
    bert = transformers.BertModel(config).eval()
    calib = [{"input_ids": torch.randint(0, 200, (4, 16)), "attention_mask": torch.ones(4, 16, dtype=torch.long)}
             for _ in range(2)]
    qmodel = mixq.quantize(bert, "dynamic", calib_data=calib, smoothquant=0.5, progress=False)
    note = qmodel.mixq_summary.notes[0]
    assert note.startswith("smoothquant: 2 of ") and "could not be folded exactly" in note, note
    assert "layer.0.attention.self.value -> dense" in note and "layer.1.attention.self.value -> dense" in note
    with torch.no_grad():
        ref = bert(**calib[0]).last_hidden_state
        out = qmodel(**calib[0]).last_hidden_state
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.99


def test_for_litert_the_static_default_smooths_every_group_auto_finds_worth_it():
    """LiteRT's hybrid kernels round each input row on its own range: its default smooths more than ORT's."""
    model = trained(steps=20)
    plant_outliers(model)
    x, _ = data(64, seed=1)
    batches = [x[i:i + 16] for i in range(0, 64, 16)]

    def smoothed(**options: object) -> str:
        q = mixq.quantize(model, "static", calib_data=batches, progress=False, **options)
        return " ".join(n for n in q.mixq_summary.notes if n.startswith("smoothquant"))

    ort, litert = smoothed(), smoothed(runtime="litert", runtime_aware=False)
    assert "fc1 -> fc2" not in ort and "no outlier channels" in ort  # outlier groups only, folded only
    assert "fc1 -> fc2" in litert and "in the int8 layer" in litert


@pytest.mark.parametrize("norm", [False, True], ids=["no-norm", "layernorm"])
def test_the_static_default_probes_only_models_with_a_norm(norm, monkeypatch):
    from mixq.quant import smoothquant

    probed: list[int] = []
    monkeypatch.setattr(smoothquant, "candidate_groups", lambda *a: probed.append(1) or candidate_groups(*a))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16) if norm else nn.ReLU(), nn.Linear(16, 4)).eval()
    calib = [torch.randn(4, 8, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    default = mixq.quantize(model, "static", calib_data=calib, progress=False)
    assert probed == ([1] if norm else [])
    plain = mixq.quantize(model, "static", calib_data=calib, progress=False, smoothquant=None)
    a, b = default.state_dict(), plain.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)  # nothing to smooth in either
    smoothing = [n for n in default.mixq_summary.notes if n.startswith("smoothquant")]
    assert len(smoothing) == norm  # the probed model says what the pass found; the other claims no pass
    assert [n for n in default.mixq_summary.notes if n not in smoothing] == plain.mixq_summary.notes
