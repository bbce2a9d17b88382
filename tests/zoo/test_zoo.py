"""The conformance zoo: every architecture of ``tests/zoo/cases.py`` in every mode either works (quantized,
exported, run by ONNX Runtime at two shapes with simulation == runtime, within int8 noise of fp32) or is refused
with a reason. ``make test`` runs a representative subset (``DEFAULT_RUNS``); the rest is nightly.
``benchmarks/zoo.py`` runs the same checks as a table (``benchmarks/results/zoo.md``).

A case that does neither is a finding: it is listed in ``KNOWN`` with its reason as a strict xfail, so it flips
(and must be removed from the list) once fixed.
"""

from __future__ import annotations

import pytest

from tests.zoo.cases import CASES
from tests.zoo.conformance import MODES, run_case

pytest.importorskip("transformers")

# (case, mode) in make test (about a minute on 2 quiet cores): one encoder, one decoder and one CNN in a mode each,
# and, in static mode, the hand-written blocks a class-name swap would silently alter
DEFAULT_RUNS = {("bert", "static"), ("llama", "dynamic"), ("resnet", "static"),
                *((name, "static") for name in ("same-pad-conv", "functional-conv", "ws-conv", "permuting-linear",
                                                "lora-linear", "relu6-mbconv"))}

# (case, mode) -> what goes wrong today (found by the zoo; benchmarks/results/zoo.md has the whole table)
_WEIGHT_DTYPE = ("the model casts its input to layer.weight.dtype, which is int8 after quantization "
                 "(ViT/DeiT: pixel_values.to(projection.weight.dtype)): the simulation truncates images to integers "
                 "(0.39 relative error vs fp32) and ONNX Runtime rejects the file")
# the tiny random-weight CNNs with many BatchNorm'd layers are chaotic: a perturbation far below one int8 step grows
# tenfold or more by the logits (measured by injecting noise into the fp32 model), so any int8 model exceeds the 0.15
# floor; not a mixq alteration (a floor relative to this measured sensitivity would tell the two apart)
_CHAOTIC = "the random model amplifies int8-sized noise past the 0.15 floor"
KNOWN: dict[tuple[str, str], str] = {
    ("vit", "dynamic"): _WEIGHT_DTYPE,
    ("deit", "dynamic"): _WEIGHT_DTYPE,
    ("vit", "fp16"): "pixel_values cast to the fp16 weight's dtype: RuntimeError Input type (Half) and bias type "
                     "(float) should be the same",
    ("deit", "fp16"): "pixel_values cast to the fp16 weight's dtype (as ViT)",
    ("deberta-v2", "static"): "export_onnx fails on the quantized DeBERTa-v2 (ExportError: Failed to export)",
    ("deberta-v2", "dynamic"): "export_onnx fails on the quantized DeBERTa-v2 (ExportError: Failed to export)",
    ("t5-encoder", "static"): "quantize: AttributeError: 'ObservedLayer' object has no attribute 'weight' (T5's "
                              "feed-forward reads self.wo.weight.dtype)",
    ("t5-encoder", "dynamic"): "export: ExportError, the quantized model does not run on the example in PyTorch "
                               "(cause not isolated)",
    ("mobilenet-v2", "static"): _CHAOTIC + " (MobileNetV2: 0.1% noise at the first conv -> 3-6% at the logits; each "
                                "layer alone is within int8 noise, 0.4-1.5% local error, except unseen-range clipping "
                                "in layer.15.reduce_1x1; end to end 0.56)",
    ("mobilenet-v2", "dynamic"): "export: the quantized model does not run in PyTorch on the example",
    ("whisper-encoder", "dynamic"): "export: ExportError, the quantized WhisperEncoder does not run on the example in "
                                    "PyTorch (AttributeError; cause not isolated)",
    ("efficientnet", "static"): _CHAOTIC + " (EfficientNet: 1% noise at the stem -> 6% at the logits; all 37 convs "
                                "now quantized, each within 1.5-3% local error, end to end 0.48)",
    ("efficientnet", "dynamic"): _CHAOTIC + " (its 36 padding='same'/'valid' convs were left float before, so it "
                                 "passed; quantized now: 0.158 vs fp32, and one rounding flip changes 1 of 3 argmaxes "
                                 "between simulation and runtime)",
    # found by the first nightly run on the merged main (2026-12-06): HF models in the modes the zoo had not run
    ("deberta-v2", "weight_only"): "export: the quantized DebertaV2Model does not run on the example in PyTorch",
    ("deberta-v2", "qat"): "prepare_qat: AttributeError: 'QATEmbedding' object has no attribute 'weight'",
    ("t5-encoder", "weight_only"): "export: the quantized T5EncoderModel does not run on the example in PyTorch",
    ("t5-encoder", "fp16"): "export: the quantized T5EncoderModel does not run on the example in PyTorch",
    ("t5-encoder", "qat"): "prepare_qat: AttributeError: 'QATLayer' object has no attribute 'weight' (T5 reads "
                           "self.wo.weight.dtype)",
    ("mobilenet-v2", "weight_only"): "export: the quantized model does not run on the example in PyTorch",
    ("mobilenet-v2", "fp16"): "export: the quantized model does not run on the example in PyTorch",
    ("mobilenet-v2", "qat"): "prepare_qat: AttributeError: 'QATLayer' object has no attribute 'stride' (HF's TF "
                             "padding reads conv.stride)",
    # the whole zoo on the merged main (benchmarks/results/zoo.md, 2026-12-06): the rest of the HF modes
    ("vit", "weight_only"): "export: the quantized model does not run on the example in PyTorch",
    ("vit", "qat"): "quantize: AttributeError: 'QATLayer' object has no attribute 'weight'",
    ("deit", "weight_only"): "export: the quantized model does not run on the example in PyTorch",
    ("deit", "qat"): "quantize: AttributeError: 'QATLayer' object has no attribute 'weight'",
    ("swin", "weight_only"): "export: torch.onnx cannot decompose Swin's window reshape with a symbolic batch axis",
    ("swin", "fp16"): "export: torch.onnx cannot decompose Swin's window reshape with a symbolic batch axis",
    ("swin", "qat"): "export: torch.onnx cannot decompose Swin's window reshape with a symbolic batch axis",
    ("efficientnet", "weight_only"): _CHAOTIC.replace("0.15", "0.03") + " (its convs were float before; per-channel "
                                     "int8 weights now: 0.063 vs fp32, sim == runtime)",
    ("efficientnet", "qat"): _CHAOTIC + " (sim vs runtime: every layer alone matches ONNX Runtime to 1e-5, float "
                             "SiLU/Sigmoid differences flip a few roundings and the model amplifies them: cos 0.96)",
    ("whisper-encoder", "weight_only"): "export: the quantized model does not run on the example in PyTorch",
    ("whisper-encoder", "fp16"): "export: the quantized model does not run on the example in PyTorch",
    ("whisper-encoder", "qat"): "quantize: AttributeError: 'QATLayer' object has no attribute 'stride'",
    ("wav2vec2", "qat"): "quantize: RuntimeError: Serialization of parametrized modules is only supported through "
                         "state_dict() (Wav2Vec2's weight-normed positional conv)",
}


def _params() -> list:
    params = []
    for case in CASES:
        for mode in MODES:
            marks = [] if (case.name, mode) in DEFAULT_RUNS else [pytest.mark.nightly]
            if (case.name, mode) in KNOWN:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN[case.name, mode]))
            params.append(pytest.param(case, mode, id=f"{case.name}-{mode}", marks=marks))
    return params


@pytest.mark.parametrize(("case", "mode"), _params())
def test_architecture_works_or_is_refused_with_a_reason(case, mode, tmp_path):
    outcome = run_case(case, mode, tmp_path)
    assert outcome.status != "fail", outcome.reason
    if outcome.status == "refused":
        assert outcome.reason.strip(), "refused without a reason"
    else:
        assert outcome.quantized > 0
