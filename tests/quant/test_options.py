"""Every option either takes effect or is refused with one line naming it: nothing is silently ignored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mixq
from mixq.quant.spec import LayerOverride, QuantConfig, QuantSpec


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


X = [torch.randn(8, 16)]

REFUSED = {
    "group size in static mode": (dict(mode="static", calib_data=X, group_size=32), "group_size=32 has no effect"),
    "group size in dynamic mode": (dict(mode="dynamic", group_size=32), "group_size=32 has no effect"),
    "group size in fp16 mode": (dict(mode="fp16", group_size=32), "group_size=32 has no effect"),
    "observer in dynamic mode": (dict(mode="dynamic", observer="mse"), "observer='mse' has no effect"),
    "observer in weight-only mode": (dict(mode="weight_only", observer="minmax"), "observer='minmax' has no"),
    "bits in fp16 mode": (dict(mode="fp16", bits=4), "bits=4 has no effect in fp16 mode"),
    "per-tensor in weight-only mode": (dict(mode="weight_only", per_channel=False), "per_channel=False"),
    "per-tensor in fp16 mode": (dict(mode="fp16", per_channel=False), "per_channel=False"),
    "int8 activations in dynamic mode": (dict(mode="dynamic", activation_dtype="int8"), "activation_dtype='int8'"),
    "max calib batches in dynamic mode": (dict(mode="dynamic", max_calib_batches=2), "max_calib_batches"),
    "max calib batches of zero": (dict(mode="static", calib_data=X, max_calib_batches=0), "max_calib_batches"),
    "exclude naming no layer": (dict(mode="dynamic", exclude=["head"]), "exclude pattern 'head' matches no layer"),
    "override naming no layer": (dict(mode="dynamic", overrides=[LayerOverride("fc*", "fp16")]),
                                 "override pattern 'fc\\*' matches no layer"),
    "config plus options": (dict(config=QuantConfig("dynamic"), bits=4), "pass either config or the options"),
    "config plus another mode": (dict(mode="weight_only", config=QuantConfig("dynamic")), "got config and mode"),
}


@pytest.mark.parametrize("kwargs,message", list(REFUSED.values()), ids=list(REFUSED))
def test_an_option_that_would_not_apply_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mixq.quantize(_mlp(), progress=False, **kwargs)


def test_per_group_weights_are_refused_in_a_config_for_static_or_dynamic_layers():
    spec = QuantSpec("int8", bits=4, granularity="per_group", group_size=32)
    with pytest.raises(ValueError, match="per-group weight scales"):
        QuantConfig("dynamic", weight=spec)
    with pytest.raises(ValueError, match="per-group weight scales"):
        QuantConfig("weight_only", weight=spec, overrides=(LayerOverride("0", "static"),))
    QuantConfig("weight_only", weight=spec)  # where it applies, it is accepted


def test_options_that_apply_still_take_effect():
    q = mixq.quantize(_mlp(), "weight_only", bits=4, group_size=16)
    assert q[0].block_size == 16
    q = mixq.quantize(_mlp(), "static", calib_data=X, observer="mse", progress=False)
    assert "(mse)" in str(q.mixq_summary)
    q = mixq.quantize(_mlp(), "dynamic", calib_data=X)  # the first batch only probes for BatchNorm folding
    assert q.mixq_summary.quantized
