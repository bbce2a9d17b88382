"""The precision ladder: which rungs a layer may climb, per objective and per what the runtime runs fast."""

from __future__ import annotations

from mixq.auto.ladder import ladder
from mixq.export.backend import get_runtime
from mixq.quant.spec import ObserverSpec


def _modes(kind: str, objective: str, floats: tuple[str, ...] = ("float32",)) -> list[str]:
    return [r.mode for r in ladder(kind, objective, ObserverSpec(), floats)]


def test_latency_offers_float16_only_on_a_runtime_that_runs_it_fast():
    assert get_runtime("ort").float_dtypes == ("float32",)  # ORT's CPU provider computes float16 in float32
    assert "fp16" not in _modes("Linear", "latency", get_runtime("ort").float_dtypes)
    assert "fp16" in _modes("Linear", "latency", ("float32", "float16"))
    assert "fp16" in _modes("Linear", "size")  # other objectives always offer it


def test_latency_never_offers_dynamic_convolutions():
    assert "dynamic" not in _modes("Conv2d", "latency", ("float32", "float16"))
    assert "fp16" not in _modes("add", "latency", ("float32", "float16"))  # graph-mode adds: static or fp32
