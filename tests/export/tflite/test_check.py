"""The export runs its file in LiteRT on the example inputs and refuses one that disagrees with the simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("litert_torch", reason="the LiteRT extra is not installed: pip install 'mixq[litert]'")

import mixq  # noqa: E402
from mixq.export import ExportError  # noqa: E402
from mixq.export.tflite import lowering  # noqa: E402
from mixq.export.tflite.check import disagreement, float_activations, last_bit_moves  # noqa: E402


def test_disagreement_is_relative_rms():
    want = np.array([3.0, 4.0])
    assert disagreement(want, want) == 0
    assert disagreement(want + np.array([0.3, 0.4]), want) == pytest.approx(0.1)


def test_float_activations_is_the_dynamic_model_without_activation_rounding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14, 4)).eval()
    x = torch.randn(8, 4, 16)
    qmodel = mixq.quantize(model, "dynamic", example_inputs=x)
    with torch.no_grad(), float_activations(qmodel):
        ref = qmodel(x)
    with torch.no_grad():
        sim = qmodel(x)
    assert not torch.equal(ref, sim)
    assert disagreement(sim.numpy(), ref.numpy()) < 0.02  # int8 activation rounding only


def test_last_bit_moves_moves_only_the_inputs_of_layers_that_round_rows_and_only_in_the_last_bit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    litert = mixq.quantize(model, "weight_only", bits=4, group_size=32, runtime="litert", progress=False)
    seen: list[torch.Tensor] = []
    x = torch.randn(4, 64)
    with torch.no_grad(), last_bit_moves(litert):
        litert[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))  # runs after the move
        litert(x)
    relative = (seen[0] - x).abs() / x.abs()
    assert 0 < float(relative.max()) <= 2 * 2**-23  # a float32 ulp or so
    default = mixq.quantize(model, "weight_only", bits=4, group_size=32, progress=False)
    with torch.no_grad(), last_bit_moves(default):
        assert torch.equal(default(x), default(x))  # nothing rounds rows: nothing moves


@pytest.mark.parametrize("mode", ["dynamic", "fp16"])
def test_a_broken_lowering_is_refused_and_the_old_file_kept(tmp_path, monkeypatch, mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(4, 16)
    qmodel = mixq.quantize(model, mode, example_inputs=x)

    def off_by_ten_percent(self, inp):  # a lowering bug: right weights, wrong arithmetic
        return F.linear(inp, self.weight, self.bias) * 1.1

    monkeypatch.setattr(lowering._FloatWeights, "forward", off_by_ten_percent)
    target = tmp_path / "m.tflite"
    target.write_bytes(b"previous export")
    with pytest.raises(ExportError, match="disagrees with mixq's (simulation|weights at float activations)") as info:
        mixq.export_tflite(qmodel, x, target)
    assert "\n" not in str(info.value)
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]
