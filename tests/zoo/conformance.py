"""One zoo check: quantize an architecture in one mode, export it, run it in ONNX Runtime at two shapes and compare.

The outcome is ``ok`` (quantized; the file runs at both shapes; simulation == runtime; the quantized model is
within int8 noise of fp32), ``refused`` (``quantize`` raised a one-line ``ValueError``/``TypeError``, or left every
layer float: the summary's reasons) or ``fail`` with what went wrong. Nothing here knows what a case should do:
the outcome is read from what the code does.

Thresholds:

* simulation vs runtime: cosine >= 0.999 and argmax agreement (over the last axis) >= 99% at each shape. The
  PyTorch simulation and ONNX Runtime run the same integer arithmetic; only float ops (softmax, norms) may sum in
  another order and move an activation across a rounding boundary. Some random-weight quantized models amplify
  that last bit past the threshold (EfficientNet in dynamic mode: one flipped code of 6144 at its first block's
  projection grows to half the classifier's). There the check goes node by node instead: every quantize node fed
  the runtime's own input must give mixq's codes bit for bit (``tests.zoo.quantize_nodes``), and the simulation
  must move at least as far from itself under a one-ulp nudge of its input as it is from the runtime; the note
  has both numbers.
* quantized vs fp32 (no silent alteration): relative error ``|q - f| / |f|`` at most ``FP32_FLOOR[mode]``. A
  per-tensor 8-bit grid over a range R has a uniform rounding error of std R / (255 * sqrt(12)), about 0.1% of R,
  i.e. 1-3% relative error for activations whose range is 3-10x their rms; through ~10 requantized tensors on a
  path, errors add in quadrature to at most ~10%. So 0.15 (SQNR 16.5 dB) is int8 noise on these random-weight
  models, while the silent alterations issue 18 found (a dropped subclass ``forward``) gave 23% and 71%. Weight-only
  int8 rounds only weights (per channel: ~0.1% per layer): 0.03. fp16 rounds weights to 11 bits: 0.01.
  Some random-weight models amplify any small noise far more (0.1% at MobileNetV2's first conv moves its logits
  5.8%): over the floor, a static/dynamic/QAT result still counts as int8 noise when its error is within
  ``PEER_MARGIN`` (1.5x) of ONNX Runtime's own quantizer's on the same fp32 file, which quantizes the graph's
  operators and cannot alter a model by its class names; a silent alteration exceeds both. Weight-only and fp16
  have no such quantizer: their peer is the float model itself with its Linear/Conv weights rounded in place as
  the mode stores them (its own forwards kept), e.g. a random-weight MobileNetV2 turns a +-0.05% weight
  perturbation into 5% output error.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import mixq
from mixq.messages import first_line
from mixq.quant.cpu import int8_needs_reduce_range
from tests.zoo.cases import Batch, Case
from tests.zoo.quantize_nodes import quantize_nodes_match

MODES = ("static", "dynamic", "weight_only", "fp16", "qat")
FP32_FLOOR = {"static": 0.15, "dynamic": 0.15, "qat": 0.15, "weight_only": 0.03, "fp16": 0.01}
SIM_COS, SIM_ARGMAX = 0.999, 0.99
ULP_DRAWS = 8  # one-ulp nudges of the input per shape when the simulation and the runtime disagree
PEER_MARGIN = 1.5  # over the fixed floor, an error within 1.5x ONNX Runtime's quantizer's on the same model is noise
_REFUSALS = (ValueError, TypeError, NotImplementedError)
_PEER = {"static": "ONNX Runtime's quantizer", "dynamic": "ONNX Runtime's quantizer", "qat": "ONNX Runtime's quantizer",
         "weight_only": "the float model with its own weights rounded in place",
         "fp16": "the float model with its own weights rounded in place"}


@dataclass
class Outcome:
    """What one (case, mode) did: ``status`` is ``ok``, ``refused`` or ``fail``; ``reason`` says why."""

    case: str
    mode: str
    status: str = "ok"
    reason: str = ""
    quantized: int = 0
    left_float: int = 0
    sim_cos: float = 1.0
    sim_argmax: float = 1.0
    fp32_rel: float = 0.0
    path: Path | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, reason: str) -> Outcome:
        self.status, self.reason = "fail", reason
        return self


def first_tensor(output: object) -> torch.Tensor:
    """The first tensor of a model's output (logits, last_hidden_state, or the tensor itself)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return next(v for v in output.values() if isinstance(v, torch.Tensor))
    return first_tensor(output[0])  # type: ignore[index]


def call(model: nn.Module, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        return first_tensor(model(**batch) if isinstance(batch, dict) else model(batch)).float()


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(session, batch: Batch) -> dict[str, np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    if isinstance(batch, torch.Tensor):
        return {names[0]: batch.numpy()}
    return {k: v.numpy() for k, v in batch.items() if k in names}


def _quantize(model: nn.Module, mode: str, calib: list[Batch]) -> nn.Module:
    rr = int8_needs_reduce_range()
    if mode == "static":
        return mixq.quantize(model, "static", calib_data=calib, reduce_range=rr, progress=False)
    if mode == "dynamic":
        return mixq.quantize(model, "dynamic", reduce_range=rr, example_inputs=calib[0])
    if mode in ("weight_only", "fp16"):
        return mixq.quantize(model, mode, example_inputs=calib[0])
    # no optimizer step here, so QAT's ranges are a calibration: min-max over the batches. The moving average (the
    # default, for training, where ranges follow the weights over hundreds of steps) would be about the first
    # batch's range after four and clip by design (T5's v: grid top 66.7, values to 81.8; error 0.163), outside
    # the floor's noise model; tests/qat and tests/quant/observers test it
    qat = mixq.prepare_qat(model, example_inputs=calib[0], observer="minmax")
    mixq.freeze_batchnorm(qat)
    qat.train()
    for batch in calib:
        call(qat, batch)
    qmodel = mixq.convert(qat.eval())
    if not torch.equal(call(qat, calib[0]), call(qmodel, calib[0])):
        raise AssertionError("the converted model does not compute what eval-mode QAT computes")
    return qmodel


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def _argmax_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 if a.shape[-1] < 2 else float(np.mean(a.argmax(-1) == b.argmax(-1)))


def quantize_case(case: Case, mode: str, out: Outcome) -> tuple[nn.Module, nn.Module | None, list[Batch]]:
    """``(float model, quantized model or None, calibration batches)``; ``out`` records a refusal or failure."""
    model = case.build()
    calib = [case.inputs(0, seed) for seed in range(4)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qmodel = _quantize(model, mode, calib)
    except _REFUSALS as err:
        out.status, out.reason = "refused", f"{type(err).__name__}: {first_line(err, limit=160)}"
        if "\n" in str(err).strip():
            out.fail(f"refused with a multi-line message: {out.reason}")
        return model, None, calib
    except Exception as err:  # noqa: BLE001  (anything else is a finding)
        out.fail(f"quantize: {type(err).__name__}: {first_line(err, limit=160)}")
        return model, None, calib
    summary = getattr(qmodel, "mixq_summary", None) or getattr(qmodel, "mixq_qat_plan", None)
    if summary is not None:
        out.quantized, out.left_float, out.notes = len(summary.quantized), len(summary.skipped), list(summary.notes)
        if not summary.quantized:
            reasons = sorted({r.detail for r in summary.skipped})
            out.status, out.reason = "refused", "left float: " + ("; ".join(reasons)[:160] or "no quantizable layer")
            return model, None, calib
    return model, qmodel, calib


def run_case(case: Case, mode: str, directory: Path) -> Outcome:
    """Quantize, export and check ``case`` in ``mode``; the file is written under ``directory``."""
    start = time.perf_counter()
    out = Outcome(case.name, mode)
    model, qmodel, calib = quantize_case(case, mode, out)
    if qmodel is not None:
        _check_file(case, model, qmodel, calib[0], directory / f"{case.name}-{mode}.onnx", out)
    out.seconds = time.perf_counter() - start
    return out


def _check_file(case: Case, model: nn.Module, qmodel: nn.Module, example: Batch, path: Path, out: Outcome) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.path = mixq.export_onnx(qmodel, example, path)
        session = ort_session(out.path)
    except Exception as err:  # noqa: BLE001
        out.fail(f"export: {type(err).__name__}: {first_line(err, limit=160)}")
        return
    for shape in (0, 1):
        batch = case.inputs(shape, 100 + shape)
        try:
            runtime = session.run(None, feeds(session, batch))[0]
        except Exception as err:  # noqa: BLE001
            out.fail(f"ONNX Runtime at shape {shape}: {first_line(err, limit=160)}")
            return
        sim, ref = call(qmodel, batch).numpy(), call(model, batch).numpy()
        if runtime.shape != sim.shape:
            out.fail(f"runtime output shape {runtime.shape} != simulation {sim.shape}")
            return
        out.sim_cos = min(out.sim_cos, _cos(sim, runtime))
        out.sim_argmax = min(out.sim_argmax, _argmax_agreement(sim, runtime))
        out.fp32_rel = max(out.fp32_rel, float(np.linalg.norm(sim - ref) / max(np.linalg.norm(ref), 1e-30)))
    if out.sim_cos < SIM_COS or out.sim_argmax < SIM_ARGMAX:
        failed = f"simulation != runtime: cos {out.sim_cos:.4f}, argmax agreement {out.sim_argmax:.3f}"
        explained, why = _amplified_last_bits(case, qmodel, session, out)
        if not explained:
            out.fail(f"{failed}; {why}")
            return
        out.notes.append(f"{failed}, but {why}")
    if out.fp32_rel > FP32_FLOOR[out.mode]:
        peer = peer_error(case, model, example, out.mode, path.with_name(f"{case.name}-{out.mode}-peer"))
        if peer is None or out.fp32_rel > PEER_MARGIN * peer:
            out.fail(f"altered: relative error vs fp32 {out.fp32_rel:.3f} > {FP32_FLOOR[out.mode]} (int8 noise)"
                     + ("" if peer is None else f" and > {PEER_MARGIN}x {_PEER[out.mode]}'s {peer:.3f}"))
        else:
            out.notes.append(f"relative error vs fp32 {out.fp32_rel:.3f} is over the {FP32_FLOOR[out.mode]} floor, "
                             f"but within {PEER_MARGIN}x {_PEER[out.mode]}'s {peer:.3f}: the model amplifies "
                             "rounding noise")


def _nudged(batch: Batch, seed: int) -> Batch:
    """``batch`` with every float element moved one ulp up or down (a fair coin each): what a float kernel's last
    bit does; integer inputs (token ids, masks) are kept."""
    g = torch.Generator().manual_seed(seed)

    def nudge(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        up = torch.rand(t.shape, generator=g) < 0.5
        return torch.nextafter(t, torch.where(up, torch.inf, -torch.inf).to(t.dtype))

    return {k: nudge(v) for k, v in batch.items()} if isinstance(batch, dict) else nudge(batch)


def ulp_sensitivity(case: Case, qmodel: nn.Module, draws: int = ULP_DRAWS) -> float | None:
    """The lowest cosine between the simulation's output and its output on the same batch nudged by one ulp
    (:func:`_nudged`), over ``draws`` nudges at each zoo shape: how far the quantized model itself moves when a
    float op's last bit differs. None for a model with no float input to nudge."""
    worst = None
    for shape in (0, 1):
        batch = case.inputs(shape, 100 + shape)
        if not any(v.is_floating_point() for v in (batch.values() if isinstance(batch, dict) else [batch])):
            return None
        sim = call(qmodel, batch).numpy()
        for seed in range(draws):
            cos = _cos(sim, call(qmodel, _nudged(batch, seed)).numpy())
            worst = cos if worst is None else min(worst, cos)
    return worst


def _amplified_last_bits(case: Case, qmodel: nn.Module, session, out: Outcome) -> tuple[bool, str]:
    """Whether a simulation != runtime outcome is the model amplifying float ops' last bits rather than mixq
    computing something else: every quantize node of the file, fed the runtime's own input, gives mixq's codes
    (``tests.zoo.quantize_nodes``), and the simulation moves at least as far from itself under a one-ulp nudge of
    its input as it is from the runtime. Returns ``(both hold, what was found)``."""
    checked = 0
    for shape in (0, 1):
        count, differ = quantize_nodes_match(out.path, feeds(session, case.inputs(shape, 100 + shape)))
        if differ:
            return False, f"quantize nodes on the runtime's own inputs differ from mixq's arithmetic: {differ[0]}"
        checked = max(checked, count)
    worst = ulp_sensitivity(case, qmodel)
    if worst is None or worst > out.sim_cos:
        moved = "it has no float input to nudge" if worst is None else f"a one-ulp nudge moves it only to {worst:.5f}"
        return False, f"the runtime's difference is not explained by last-bit sensitivity ({moved})"
    return True, (f"the simulation moves as far from itself (cos {worst:.5f}) when its input moves by one ulp, and all "
            f"{checked} quantize nodes on the runtime's own inputs equal mixq's arithmetic bit for bit: the model "
            "amplifies last-bit differences of float ops (the runtime's vs torch's), not a different computation")


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.items = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def peer_error(case: Case, model: nn.Module, example: Batch, mode: str, stem: Path) -> float | None:
    """The relative error vs fp32 of ONNX Runtime's own quantizer (``quantize_static``, QDQ, per-channel; or
    ``quantize_dynamic``) on the fp32 file of the same model, at the zoo's two shapes: the noise floor of int8 on
    this model from a tool that quantizes the ONNX graph's operators and so cannot alter a model by class name.
    Weight-only and fp16 have no such quantizer: their peer is :func:`rounded_weights_error`. None where the peer
    fails."""
    if mode in ("weight_only", "fp16"):
        return rounded_weights_error(case, model, mode)
    if mode not in ("static", "dynamic", "qat"):
        return None
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fp32 = mixq.export_onnx(model, example, stem.with_suffix(".fp32.onnx"))
            peer = stem.with_suffix(".onnx")
            if mode == "dynamic":
                quantize_dynamic(fp32, peer, per_channel=True, weight_type=QuantType.QInt8)
            else:
                session = ort_session(fp32)
                reader = _Reader([feeds(session, case.inputs(0, seed)) for seed in range(4)])
                quantize_static(fp32, peer, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            session = ort_session(peer)
            errors = []
            for shape in (0, 1):
                batch = case.inputs(shape, 100 + shape)
                got, ref = session.run(None, feeds(session, batch))[0], call(model, batch).numpy()
                errors.append(float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)))
    except Exception:  # noqa: BLE001  (no peer measurement: the fixed floor alone decides)
        return None
    return max(errors)


def _rounded(weight: torch.Tensor, mode: str) -> torch.Tensor:
    """``weight`` as ``mode`` stores it: float16, or int8 symmetric per output channel (round half to even)."""
    if mode == "fp16":
        return weight.half().float()
    scale = weight.abs().flatten(1).amax(1).clamp_min(1e-12) / 127
    scale = scale.reshape(-1, *[1] * (weight.dim() - 1))
    return torch.round(weight / scale).clamp(-127, 127) * scale


def rounded_weights_error(case: Case, model: nn.Module, mode: str) -> float:
    """The relative error vs fp32 of the float model itself (its own classes and ``forward``s) with every Linear and
    Conv weight rounded in place as weight-only int8 (per channel) or fp16 store it: this model's amplification
    of that rounding alone. A quantized copy that drops or alters what a layer computes is far beyond it."""
    rounded = case.build()
    with torch.no_grad():
        for m in rounded.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                m.weight.copy_(_rounded(m.weight, mode))
    errors = []
    for shape in (0, 1):
        batch = case.inputs(shape, 100 + shape)
        got, ref = call(rounded, batch).numpy(), call(model, batch).numpy()
        errors.append(float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)))
    return max(errors)
