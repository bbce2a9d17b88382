"""The peer for ``bench_qat.py``: torch.ao's (deprecated) FX-mode QAT with the same weight precision and schedule.

Used only as a comparison; mixq itself never builds on torch.ao.quantization.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import nn


def _qconfig_mapping(bits: int, per_channel: bool):  # noqa: ANN202  (torch.ao types)
    from torch.ao.quantization import FakeQuantize, QConfig, QConfigMapping, get_default_qat_qconfig_mapping
    from torch.ao.quantization.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

    if bits == 8 and per_channel:
        return get_default_qat_qconfig_mapping("x86")
    qmax = 2 ** (bits - 1) - 1
    if per_channel:
        weight = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-qmax,
                                        quant_max=qmax, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    else:
        weight = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=-qmax, quant_max=qmax,
                                        dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    activation = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                        dtype=torch.quint8)
    return QConfigMapping().set_global(QConfig(activation=activation, weight=weight))


def _freeze(model: nn.Module) -> None:
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats
    from torch.ao.quantization import disable_observer

    model.apply(disable_observer)
    model.apply(freeze_bn_stats)


def torch_ao_qat(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                 bits: int, per_channel: bool, finetune: Callable[..., float]) -> dict[str, float]:
    """Accuracy of torch.ao's converted QAT model (x86 engine) and its seconds per training epoch, trained by
    ``finetune(model, x, y, freeze=...)`` exactly as mixq's QAT is."""
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qat = prepare_qat_fx(copy.deepcopy(model).train(), _qconfig_mapping(bits, per_channel), (x[:8],))
        seconds = finetune(qat, x, y, freeze=_freeze)
        converted = convert_fx(qat.eval())
        with torch.no_grad():
            acc = float((converted(x_test).argmax(1) == y_test).float().mean())
    return {"torch_ao_qat": acc, "torch_ao_epoch_s": seconds}
