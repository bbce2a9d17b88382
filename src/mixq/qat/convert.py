"""``mixq.convert`` and the QAT schedule controls (``freeze_observers``, ``freeze_batchnorm``)."""

from __future__ import annotations

import warnings

from torch import nn

from mixq.pretrained import mark_saveable
from mixq.qat.config import QATConfig
from mixq.qat.embedding import QATEmbedding
from mixq.qat.fake_quantizer import FakeQuantizer
from mixq.qat.layers import QATAdd, QATLayer, QATMatMul
from mixq.qat.prepare import is_prepared
from mixq.quant.fusion import set_submodule
from mixq.quant.graft import copy_model
from mixq.quant.modules import FloatAdd, FloatMatMul
from mixq.quant.modules.registry import kind_name, quantized_classes
from mixq.quant.summary import QuantizationSummary, module_bytes


def freeze_observers(model: nn.Module) -> int:
    """Stop updating activation ranges everywhere in a QAT model (learnable scales keep training); returns how many
    quantizers were frozen. Usual after the first epochs, once ranges have settled."""
    quantizers = [m for m in model.modules() if isinstance(m, FakeQuantizer)]
    for q in quantizers:
        q.freeze()
    return len(quantizers)


def freeze_batchnorm(model: nn.Module) -> int:
    """Switch folded BatchNorms to their running statistics (no more updates); returns how many. Usual for the last
    epochs of QAT, so training sees exactly the deployed folded weights."""
    layers = [m for m in model.modules() if isinstance(m, QATLayer) and m.bn is not None]
    for layer in layers:
        layer.bn_frozen.fill_(True)
    return len(layers)


def convert(model: nn.Module) -> nn.Module:
    """Return the deployable int8 model of a trained QAT model (the same kind of model ``mixq.quantize`` returns,
    with ``.mixq_summary`` and ``.mixq_config``, ready for ``mixq.export_onnx``). Its outputs equal the QAT
    model's in eval mode exactly."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not is_prepared(model):
        if any(isinstance(m, quantized_classes()) for m in model.modules()):
            raise ValueError(f"{type(model).__name__} is already quantized; convert takes the model returned by "
                             "mixq.prepare_qat after training")
        raise ValueError(f"{type(model).__name__} was not prepared for QAT: call qat = mixq.prepare_qat(model), "
                         "train qat, then mixq.convert(qat)")
    layers = [m for m in model.modules() if isinstance(m, QATLayer)]
    cfg = getattr(model, "mixq_qat", None) or QATConfig(  # attributes do not survive copying a GraphModule
        layers[0].weight_spec if layers else QATConfig().weight, learnable_scales=any(m.learnable for m in layers))
    plan = getattr(model, "mixq_qat_plan", None) or QuantizationSummary("qat")
    qmodel = copy_model(model).eval()
    summary = QuantizationSummary("static (QAT)", notes=list(plan.notes))
    summary.layers += [r for r in plan.layers if r.status != "quantized"]
    found = [(n, m) for n, m in qmodel.named_modules() if isinstance(m, (QATLayer, QATAdd, QATMatMul, QATEmbedding))]
    for name, module in found:
        ran = module.has_data
        if isinstance(module, QATMatMul):
            set_submodule(qmodel, name, module.to_quantized() if ran else FloatMatMul(module.alpha))
            if ran:
                scaled = "" if module.alpha == 1.0 else f", x{module.alpha:.4g} folded into the output scale"
                summary.add(name, "matmul", "quantized", f"static a:{cfg.activation} x a:{cfg.activation} (QAT), "
                            f"float output{scaled}")
            continue
        if isinstance(module, QATAdd):
            set_submodule(qmodel, name, module.to_quantized() if ran else FloatAdd(module.relu))
            if ran:
                summary.add(name, "add", "quantized", f"static a:{cfg.activation} (QAT)")
            continue
        kind = kind_name(module.layer)
        if not ran:
            set_submodule(qmodel, name, module.to_float())
            summary.add(name, kind, "float", "never executed during training")
            continue
        new = module.to_quantized()
        scales = "learned" if module.learnable else "min-max"
        detail = f"QAT w:{cfg.weight} ({scales} scales) a:{cfg.activation}" + (", relu fused" if module.relu else "")
        if getattr(module, "float_output", False):
            detail += ", float output (a model output)"
        if isinstance(module, QATEmbedding):
            detail = module.describe()
        before = module_bytes(module.layer) + (module_bytes(module.bn) if module.bn is not None else 0)
        summary.add(name, kind, "quantized", detail, before, module_bytes(new))
        set_submodule(qmodel, name, new)
    summary.sort_by(qmodel)
    for attr in ("mixq_qat", "mixq_qat_plan"):
        if hasattr(qmodel, attr):
            delattr(qmodel, attr)
    if not summary.quantized:
        warnings.warn("no layer of the QAT model was quantized (nothing quantizable, or it never ran in training); "
                      "returning it in float", stacklevel=2)
    qmodel.mixq_summary = summary
    qmodel.mixq_config = cfg.static_config()
    return mark_saveable(qmodel)
