"""``mixq.prepare_qat``: turn a float model (or a calibrated static int8 model) into a trainable QAT model.

The pipeline is post-training quantization's, with training-time parts swapped in: the same dataflow-based
Conv+BatchNorm(+ReLU) discovery (BatchNorms are moved *into* the QAT layers instead of being folded, so they keep
training), the same per-layer plan, and the same ``torch.fx`` graph mode (residual adds become ``QATAdd``, each
consumer shares its producer's quantizer), so ``mixq.convert`` yields the same kind of model as ``mixq.quantize``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from torch import fx, nn

from mixq.qat.config import QATConfig
from mixq.qat.embedding import QATEmbedding
from mixq.qat.fake_quantizer import FakeQuantizer
from mixq.qat.layers import QATAdd, QATLayer, QATMatMul
from mixq.qat.outputs import output_layers
from mixq.quant.attention_logits import checked_gains, sharp_layers
from mixq.quant.calibration import Batch, call_checked
from mixq.quant.capture import capture_compute, root_weights
from mixq.quant.fusion import calls_from_graph, detach_fusions, find_fusions, set_submodule, trace_calls
from mixq.quant.graft import copy_model, graft, graph_modules, home_of
from mixq.quant.graph import apply_graph_mode, producer, share_observers, trace
from mixq.quant.graph_export import NO_NAN_GUARD, export_friendly, returns_cache
from mixq.quant.modules import FloatAdd, FloatMatMul, QuantizedAdd
from mixq.quant.modules.registry import adapt_in_place, kind_name, qat_class, quantized_classes
from mixq.quant.observers import make_observer
from mixq.quant.planning import excluded, plan
from mixq.quant.root_capture import RootCapture, capture_graph, task_root
from mixq.quant.spec import ObserverSpec, QuantSpec
from mixq.quant.summary import QuantizationSummary


def _static_classes() -> tuple[type, ...]:
    """The static int8 modules QAT can start from (every registered one that has a float form), plus the add."""
    return (*[c for c in quantized_classes("static") if hasattr(c, "to_float")], QuantizedAdd)


_QAT_TYPES = (QATLayer, QATAdd, QATMatMul, QATEmbedding, FakeQuantizer)


def is_prepared(model: nn.Module) -> bool:
    """True for a model returned by ``prepare_qat`` (and not yet converted)."""
    return hasattr(model, "mixq_qat") or any(isinstance(m, _QAT_TYPES) for m in model.modules())


def _make_config(weight_bits: int, activation_bits: int, per_channel: bool, learnable_scales: bool, observer: str,
                 freeze_observers_after: int | None, freeze_bn_after: int | None,
                 exclude: Iterable[str], float_outputs: bool = True) -> QATConfig:
    if isinstance(weight_bits, bool) or not isinstance(weight_bits, int) or not 2 <= weight_bits <= 8:
        raise ValueError(f"weight_bits must be an integer from 2 to 8 (narrower weights are stored as int8 so "
                         f"ONNX Runtime's int8 kernels run them), got {weight_bits!r}")
    if activation_bits != 8:
        raise ValueError(f"activation_bits must be 8 (ONNX Runtime's integer kernels take uint8 activations), "
                         f"got {activation_bits!r}")
    if isinstance(exclude, str):
        raise TypeError(f"exclude must be a list of name patterns, e.g. exclude=[{exclude!r}]")
    granularity = "per_channel" if per_channel else "per_tensor"
    return QATConfig(QuantSpec("int8", bits=weight_bits, granularity=granularity), observer=ObserverSpec(observer),
                     learnable_scales=learnable_scales, freeze_observers_after=freeze_observers_after,
                     freeze_bn_after=freeze_bn_after, exclude=tuple(exclude), float_outputs=float_outputs)


def _quantizer(cfg: QATConfig, name: str) -> FakeQuantizer:
    return FakeQuantizer(make_observer(cfg.observer, cfg.activation, name=name), learnable=cfg.learnable_scales,
                         freeze_after=cfg.freeze_observers_after)


def _find_fusions(model: nn.Module, example_inputs: Batch | None, cfg: QATConfig, notes: list[str]) -> list:
    if example_inputs is not None:
        training = model.training
        model.eval()  # the probe must not update BatchNorm statistics
        calls = trace_calls(model, lambda m: call_checked(m, example_inputs))
        model.train(training)
    else:
        calls = calls_from_graph(model)
        if calls is None:
            notes.append("torch.fx could not trace the model and no example_inputs were given, so Conv+BatchNorm "
                         "were not fused; pass example_inputs=... to prepare_qat to fold them")
            return []
    return [f for f in find_fusions(calls) if not excluded(f.layer, cfg.exclude)]


def _output_layers(model: nn.Module, targets: list[str], example_inputs: Batch | None, notes: list[str]) -> set[str]:
    """The layers computing a model output (logits): their output stays float, as in static graph mode."""
    example = example_inputs if example_inputs is not None else getattr(model, "dummy_inputs", None)
    if example is None:
        notes.append("no example_inputs: layers computing the model's outputs could not be found, so their outputs "
                     "are fake-quantized too; pass example_inputs=... to keep them float")
        return set()
    try:
        found = output_layers(model, targets, example)
    except Exception as err:  # noqa: BLE001 - only the model's own dummy inputs get here (the user's ran before)
        if example_inputs is not None:
            raise
        notes.append(f"the model's dummy_inputs do not run it ({type(err).__name__}), so layers computing its "
                     "outputs were not found and are fake-quantized too; pass example_inputs=... to keep them float")
        return set()
    if found:
        notes.append(f"{', '.join(found)} compute{'s' if len(found) == 1 else ''} the model's output: kept float "
                     "(not fake-quantized to uint8), as static graph mode does")
    return set(found)


def _requantize_read_outputs(model: nn.Module, summary: QuantizationSummary) -> None:
    """A model output that graph mode also feeds to another quantized op shares its grid with it: fake-quantize it."""
    read = {id(m.input_observer) for m in model.modules() if isinstance(m, QATLayer) and m.shared_input}
    read |= {id(o) for m in model.modules() if isinstance(m, (QATAdd, QATMatMul))
             for o, shared in zip((m.a_observer, m.b_observer), m.shared, strict=True) if shared}
    for name, m in model.named_modules():
        if isinstance(m, QATLayer) and m.float_output and id(m.output_observer) in read:
            m.float_output = False
            summary.layers = [dataclasses.replace(r, detail=r.detail.replace(", float output", ""))
                              if r.name == name else r for r in summary.layers]


def _capture(model: nn.Module, cfg: QATConfig, example_inputs: Batch | None, summary: QuantizationSummary) -> None:
    """Modules computing with their weights outside a registered layer are captured with torch.export (in eval
    mode, so the probe leaves BatchNorm statistics alone) and train as the plain layers they compute with."""
    training = model.training
    model.eval()
    try:
        failed = capture_compute(model, example_inputs, summary.notes, cfg.exclude, trainable=True)
    finally:
        model.train(training)
    summary.notes += [f"{name} stays float: {why}" for name, why in failed.items()]
    own = root_weights(model)
    if own:
        summary.notes.append(f"the model's own parameters ({', '.join(own)}) stay float wherever its forward computes "
                             "with them: QAT captures submodules only; move that compute into a submodule (or use "
                             "mixq.quantize, which captures the model's own forward too)")


def _sharp_logit_layers(model: nn.Module, targets: list[str], example_inputs: Batch | None,
                        cfg: QATConfig, notes: list[str]) -> dict[str, str]:
    """The layers whose uint8 output step, over the range ``example_inputs`` gives them, would move the attention
    logits they feed by more than a fraction of a nat (``mixq.quant.attention_logits``): they stay float, as
    ``mixq.quantize`` leaves them after calibration."""
    if example_inputs is None:
        return {}
    gains, ranges = checked_gains(model, example_inputs, targets, notes)
    levels = cfg.activation.qmax - cfg.activation.qmin
    return sharp_layers(gains, {name: (high - low) / levels for name, (low, high) in ranges.items()})


def _prepare_float(model: nn.Module, cfg: QATConfig, example_inputs: Batch | None,
                   summary: QuantizationSummary) -> nn.Module:
    summary.notes += export_friendly(model, NO_NAN_GUARD)[0]  # the same function; its file exports at any batch
    _capture(model, cfg, example_inputs, summary)
    fusions = _find_fusions(model, example_inputs, cfg, summary.notes)
    relu_layers, batchnorms = detach_fusions(model, fusions)
    summary.notes += [f"{f.batchnorm} trains inside {f.layer} (folded at conversion)" for f in fusions if f.batchnorm]
    targets = plan(model, cfg.static_config(), summary, qat=True)
    adapt_in_place(model, targets)
    sharp = _sharp_logit_layers(model, targets, example_inputs, cfg, summary.notes)
    for name, why in sharp.items():
        summary.add(name, kind_name(model.get_submodule(name)), "float", why)
    targets = [name for name in targets if name not in sharp]
    outputs = _output_layers(model, targets, example_inputs, summary.notes) if cfg.float_outputs else set()
    # the layers kept float for sharp logits become module calls too, so a MatMul reading one is found (_graph_mode)
    kinds = {n: kind_name(model.get_submodule(n)) for n in targets}
    capture, fx_why = _export_for_training(model, targets + list(sharp), example_inputs, summary.notes)
    if capture is not None and not capture.root:
        model = capture.graph
    for name, why in (capture.left_float if capture is not None else {}).items():
        if name in kinds:  # not called as one layer in the graph: computes as the model does
            summary.add(name, kinds[name], "float", why)
    targets = [n for n in targets if capture is None or n not in capture.left_float]
    for name in targets:
        layer = model.get_submodule(name)
        new = qat_class(layer).prepare(
            layer, cfg.weight, quantizer=lambda label, n=name: _quantizer(cfg, f"{n} ({label})"),
            relu=name in relu_layers, relu_max=relu_layers.get(name), bn=batchnorms.get(name),
            learnable=cfg.learnable_scales, freeze_bn_after=cfg.freeze_bn_after, name=name)
        new.float_output = name in outputs
        set_submodule(model, name, new)
        bn = f" + {type(batchnorms[name]).__name__}" if name in batchnorms else ""
        summary.add(name, kind_name(layer), "quantized", f"fake-quantized for training, {new.describe()}{bn}")
    if capture is None:
        probe = None if example_inputs is None else (lambda m: call_checked(_observing(m), example_inputs))
        model, adds = apply_graph_mode(model, lambda name: _quantizer(cfg, name), summary.notes, add_cls=QATAdd,
                                       untraceable=fx_why, probe=probe)
    else:
        model, adds = _graph_mode(model, capture, cfg, summary, sharp)
    _requantize_read_outputs(model, summary)
    for name in adds:
        kind = "matmul" if isinstance(model.get_submodule(name), QATMatMul) else "add"
        summary.add(name, kind, "quantized", "fake-quantized for training")
    return model


def _float_reason(graph: fx.GraphModule, name: str, full: str, cfg: QATConfig, sharp: dict[str, str],
                  prefix: str) -> str:
    """Why graph op ``name`` (``full`` in the model) stays float, or "": ``exclude`` names it, or it is a MatMul
    reading a layer the attention-logit rule keeps float (its int8 inputs would round that layer's output after
    all), as static quantization decides."""
    if excluded(full, cfg.exclude):
        return "excluded"
    if not isinstance(graph.get_submodule(name), QATMatMul):
        return ""
    node = next(n for n in graph.graph.nodes if n.op == "call_module" and n.target == name)
    for arg in node.args[:2]:
        source = producer(graph, arg)
        for layer, why in sharp.items():
            if layer.startswith(prefix) and source is graph.get_submodule(layer[len(prefix):]):
                return f"it reads {layer}'s output, which stays float: {why}"
    return ""


def _graph_mode(model: nn.Module, capture: RootCapture, cfg: QATConfig, summary: QuantizationSummary,
                sharp: dict[str, str]) -> tuple[nn.Module, list[str]]:
    """Graph mode's passes on the captured graph (QAT layers already in it); a captured root goes back into the
    model under its own class. An add or MatMul ``exclude`` names, and a MatMul reading a layer ``sharp`` keeps
    float, stay float. Returns ``(model, names of the adds and MatMuls that train fake-quantized)``."""
    prefix = capture.prefix
    graph, made = apply_graph_mode(capture.graph, lambda name: _quantizer(cfg, prefix + name), summary.notes,
                                   add_cls=QATAdd, matmul_cls=QATMatMul, exported=True,
                                   float_outputs=cfg.float_outputs)
    kept = []
    for name in made:
        op = graph.get_submodule(name)
        why = _float_reason(graph, name, prefix + name, cfg, sharp, prefix)
        if why:
            is_matmul = isinstance(op, QATMatMul)
            set_submodule(graph, name, FloatMatMul(op.alpha) if is_matmul else FloatAdd(op.relu))
            summary.add(prefix + name, "matmul" if is_matmul else "add", "float", why)
        else:
            kept.append(prefix + name)
    return capture.put_back(model, graph), kept


def _export_for_training(model: nn.Module, targets: list[str], example_inputs: Batch | None,
                         notes: list[str]) -> tuple[RootCapture | None, str]:
    """``(capture or None, why torch.fx cannot trace the model)``: graph mode for QAT where torch.fx cannot trace
    the model, as static quantization has it (integer attention MatMuls, adds, shared scales), the graph captured
    in training mode and following train()/eval() (``mixq.quant.train_graph``). What is captured is a Hugging Face
    task model's base model, else the whole model (``mixq.quant.root_capture``); a captured root inside the model
    is put in its place as a plain graph module until :func:`_graph_mode` grafts it back under its class."""
    fx_why = trace(model)[1] if targets else ""
    if not fx_why or example_inputs is None:
        return None, fx_why
    if returns_cache(model, example_inputs):
        notes.append("graph mode through torch.export not used: the model returns a key/value cache for generation, "
                     "which one captured graph cannot carry; set model.config.use_cache = False before prepare_qat "
                     "for graph mode")
        return None, fx_why
    capture, why = capture_graph(model, task_root(model), targets, example_inputs, training=True)
    if capture is None:
        notes.append(f"graph mode through torch.export not used: {why}")
        return None, fx_why
    notes.append(f"torch.fx could not trace the model ({fx_why}); captured {capture.describe()} with torch.export in "
                 f"training mode instead, its {capture.graph.mixq_dropouts} dropouts and drop-paths following "
                 "train()/eval() (checked against the model in both modes)")
    return capture, fx_why


def _observing(model: nn.Module) -> nn.Module:
    """``model`` (a copy) in eval mode, where dropout passes its input through as the same tensor, but with its
    QAT layers in training mode, where they observe (with no range yet they cannot quantize)."""
    model.eval()
    for m in model.modules():
        if isinstance(m, _QAT_TYPES):
            m.train()
    return model


def _seeded(cfg: QATConfig, name: str, scale: torch.Tensor, zero_point: torch.Tensor) -> FakeQuantizer:
    if zero_point.dtype != cfg.activation.torch_dtype:
        raise ValueError(f"{name!r} was calibrated with {zero_point.dtype} activations; QAT continues from uint8 "
                         "activations only (quantize with activation_dtype='uint8')")
    fq = _quantizer(cfg, name)
    fq.seed(scale, zero_point)
    return fq


def _prepare_static(model: nn.Module, cfg: QATConfig, summary: QuantizationSummary) -> nn.Module:
    """Rebuild QAT layers from a calibrated static model: dequantized weights, its activation scales as start."""
    layers = adds = 0
    for name, q in [(n, m) for n, m in model.named_modules() if isinstance(m, _static_classes())]:
        if isinstance(q, QuantizedAdd):
            new = QATAdd(_seeded(cfg, f"{name} (a)", q.x_scale, q.x_zp), _seeded(cfg, f"{name} (b)", q.b_scale, q.b_zp),
                         _seeded(cfg, f"{name} (output)", q.y_scale, q.y_zp), relu=q.relu)
            adds += 1
        else:
            layer = q.to_float()
            float_output = q.y_scale is None  # graph mode left it float: no integer kernel reads it
            y_q = (q.x_scale, q.x_zp) if float_output else (q.y_scale, q.y_zp)  # an unused placeholder grid
            new = qat_class(layer)(layer, cfg.weight, _seeded(cfg, f"{name} (input)", q.x_scale, q.x_zp),
                           _seeded(cfg, f"{name} (output)", *y_q), relu=q.relu, relu_max=q.relu_max,
                           learnable=cfg.learnable_scales,
                           name=name)
            new.float_output = float_output
            layers += 1
        set_submodule(model, name, new)
        summary.add(name, type(q).__name__, "quantized", "fake-quantized for training, from the calibrated model")
    shared = sum(share_observers(graph) for graph in graph_modules(model))  # graph mode (the whole model or its base)
    summary.notes.append(f"started from a calibrated static model: {layers} layers and {adds} adds keep its "
                         f"activation scales ({shared} inputs share their producer's)")
    return model


def prepare_qat(
    model: nn.Module,
    *,
    example_inputs: Batch | None = None,
    weight_bits: int = 8,
    activation_bits: int = 8,
    per_channel: bool = True,
    learnable_scales: bool = False,
    observer: str = "moving_average",
    freeze_observers_after: int | None = None,
    freeze_bn_after: int | None = None,
    exclude: Iterable[str] = (),
    float_outputs: bool = True,
    config: QATConfig | None = None,
) -> nn.Module:
    """Return a trainable copy of ``model`` that simulates int8 deployment in its forward pass (the original is
    never modified). Train it with any loop and optimizer (mixed precision included), then ``mixq.convert`` it.

    ``model`` is a float model, or one ``mixq.quantize(..., "static")`` already calibrated (QAT then starts from
    its dequantized weights and its activation scales: PTQ first, QAT to recover). Weights are symmetric int8 of
    ``weight_bits`` (2-8) bits, per channel unless ``per_channel=False``; activations are uint8. Conv+BatchNorm is
    found from ``example_inputs`` (or a ``torch.fx`` trace when omitted) and trained folded (see
    ``mixq.qat.layers``). Activation ranges start from the first training batches (``observer``) and freeze after
    ``freeze_observers_after`` batches; BatchNorm switches to running statistics after ``freeze_bn_after`` steps
    (or call ``mixq.freeze_observers`` / ``mixq.freeze_batchnorm``). ``learnable_scales=True`` trains every scale
    with LSQ. Layers computing the model's outputs (a classifier's logits, found from ``example_inputs``) keep
    their outputs float unless ``float_outputs=False``, as static graph mode does. In eval mode the model computes
    exactly what the converted int8 model computes.

    Example::

        qat = mixq.prepare_qat(model, example_inputs=x[:8], weight_bits=4, per_channel=False)
        train(qat)  # the user's loop
        qmodel = mixq.convert(qat)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if is_prepared(model):
        raise ValueError(f"{type(model).__name__} is already prepared for QAT; train it and call mixq.convert(...) "
                         "(prepare_qat takes the float model, once)")
    cfg = config or _make_config(weight_bits, activation_bits, per_channel, learnable_scales, observer,
                                 freeze_observers_after, freeze_bn_after, exclude, float_outputs)
    qat = copy_model(model)
    summary = QuantizationSummary("qat")
    if any(isinstance(m, _static_classes()) for m in qat.modules()):
        qat = _prepare_static(qat, cfg, summary)
    elif hasattr(qat, "mixq_config"):
        raise ValueError(f"QAT can start from a float model or a static int8 one, not from a "
                         f"{qat.mixq_config.mode!r}-quantized model; pass the float model")
    else:
        home = home_of(qat)
        qat = _prepare_float(qat, cfg, example_inputs, summary)
        if isinstance(qat, fx.GraphModule) and home is not None:  # graph mode: back under the model's class
            qat = graft(qat, home)
            summary.notes.append(f"the QAT model is a {type(qat).__name__}, a subclass of the model's own "
                                 f"{home[0].__name__} whose forward is the captured graph")
    for attr in ("mixq_summary", "mixq_config"):
        if hasattr(qat, attr):
            delattr(qat, attr)
    summary.sort_by(qat)
    qat.mixq_qat = cfg
    qat.mixq_qat_plan = summary
    return qat.train()
