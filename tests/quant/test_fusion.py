"""BatchNorm folding and ReLU fusion found from the real dataflow, and kept out where it would be wrong."""

from __future__ import annotations

import torch
from torch import nn

from mixq.quant.fusion import apply_fusions, find_fusions, fold_batchnorm, trace_calls


def _randomise_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn.eval()


def test_fold_batchnorm_is_exact_in_float():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 8, 3, bias=False).eval(), _randomise_bn(nn.BatchNorm2d(8))
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        expected = bn(conv(x))
        fold_batchnorm(conv, bn)
        assert torch.allclose(conv(x), expected, atol=1e-5)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.shared = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.act(self.bn(self.conv(x)))
        return self.shared(self.conv2(y)) + self.shared(x)


def _probe(model, x):
    return find_fusions(trace_calls(model, lambda m: m(x)))


def test_finds_chains_in_a_non_sequential_forward_and_handles_inplace_relu():
    model = _Block().eval()
    _randomise_bn(model.bn)
    fusions = {f.layer: f for f in _probe(model, torch.randn(1, 4, 5, 5))}
    assert fusions["conv"].batchnorm == "bn" and fusions["conv"].relu == "act"
    assert "conv2" not in fusions  # its ReLU is shared (called twice): never removed


def test_apply_fusions_preserves_float_outputs():
    torch.manual_seed(0)
    model = _Block().eval()
    _randomise_bn(model.bn)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        expected = model(x)
        relu_layers = apply_fusions(model, _probe(model, x))
    assert relu_layers == {"conv": None}  # a plain ReLU: no upper bound
    assert isinstance(model.bn, nn.Identity) and isinstance(model.act, nn.Identity)
    with torch.no_grad():
        folded = torch.relu(model.conv(x))  # what the quantized layer computes with the fused ReLU
        assert torch.allclose(model.shared(model.conv2(folded)) + model.shared(x), expected, atol=1e-5)


def test_batchnorm_reading_something_else_is_not_folded():
    class TwoPaths(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.conv(x) + self.bn(x)

    assert _probe(TwoPaths().eval(), torch.randn(1, 2, 3, 3)) == []


def test_linear_relu_fusion():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    fusions = _probe(model, torch.randn(3, 4))
    assert [(f.layer, f.batchnorm, f.relu) for f in fusions] == [("0", None, "1")]
