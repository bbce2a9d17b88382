"""QAT on layers written in the wild (``mixq.quant.capture`` with ``trainable=True``): a Linear subclass that
permutes its input, ``F.conv2d`` on a module's own parameter and a LoRA wrapper train as the plain layers they
compute with, and the converted model equals the fake-quant model exactly; a weight computed from parameters
(weight standardisation) stays float with the reason."""

from __future__ import annotations

import torch
from torch import nn

import mixq
from tests.quant.test_capture import FlippedLinear, FunctionalConv, LoRALinear, StandardisedConv


class SamePaddingConv(nn.Conv2d):
    """TF "same" padding through a ZeroPad2d member, as pip-packaged mobile CNNs write it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pad(x))


class Net(nn.Module):
    def __init__(self, standardised: bool = False) -> None:
        super().__init__()
        self.conv = StandardisedConv(3, 8, 3, padding=1) if standardised else SamePaddingConv(3, 8, 2)
        self.functional = FunctionalConv(8)
        self.flipped = FlippedLinear(8, 16)
        self.lora = LoRALinear(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.functional(torch.relu(self.conv(x))).mean((2, 3))
        return self.head(self.lora(torch.relu(self.flipped(x))))


def test_wild_layers_train_and_convert_exactly():
    torch.manual_seed(0)
    model = Net()
    x = torch.randn(8, 3, 10, 10)
    qat = mixq.prepare_qat(model, example_inputs=x)
    names = [r.name for r in qat.mixq_qat_plan.quantized]
    assert {"conv.mixq_conv2d_0", "functional.mixq_conv2d_0", "flipped.mixq_linear_0", "lora.base",
            "lora.mixq_matmul_0"} <= set(names)
    opt = torch.optim.SGD(qat.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        qat.train()(torch.randn(8, 3, 10, 10)).pow(2).mean().backward()
        opt.step()
    qmodel = mixq.convert(qat.eval())
    with torch.no_grad():
        assert torch.equal(qat(x), qmodel(x))
        ref = model.eval()(x)
    assert ((qmodel(x) - ref).norm() / ref.norm()).item() < 0.3  # trained a little: close to the float model


def test_a_computed_weight_stays_float_in_qat_with_the_reason():
    torch.manual_seed(0)
    qat = mixq.prepare_qat(Net(standardised=True), example_inputs=torch.randn(4, 3, 10, 10))
    assert not any(r.name.startswith("conv") for r in qat.mixq_qat_plan.quantized)
    assert any("conv stays float: its conv2d weight is computed from parameters" in n
               for n in qat.mixq_qat_plan.notes)
