"""``padding='same'`` / ``'valid'`` convolutions (HF EfficientNet writes every conv that way) are quantized with the
equivalent integer padding; only an asymmetric ``'same'`` (even kernel) stays float, with its reason."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mixq
from mixq.quant.modules.conv_args import integer_padding


@pytest.mark.parametrize(("conv", "padding"), [
    (nn.Conv2d(4, 4, 3, padding="same"), [1, 1]),
    (nn.Conv2d(4, 4, (3, 5), padding="same", dilation=2), [2, 4]),
    (nn.Conv2d(4, 4, 3, stride=2, padding="valid"), [0, 0]),
    (nn.Conv1d(4, 4, 5, padding="same"), [2]),
    (nn.Conv2d(4, 4, 2, padding="same"), None),
], ids=["3x3", "dilated", "valid", "conv1d", "even-kernel"])
def test_string_padding_resolves_to_symmetric_integers(conv, padding):
    assert integer_padding(conv) == padding


def test_same_and_valid_convs_quantize_within_int8_noise_and_an_even_same_kernel_says_why():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding="same"), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding="valid"),
                          nn.ReLU(), nn.Conv2d(8, 8, 2, padding="same")).eval()
    data = [torch.randn(4, 3, 12, 12) for _ in range(4)]
    q = mixq.quantize(model, "static", calib_data=data, progress=False)
    rows = {r.name: r for r in q.mixq_summary.layers}
    assert rows["0"].status == rows["2"].status == "quantized"
    assert rows["4"].status == "float" and "pads asymmetrically" in rows["4"].detail
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert out.shape == ref.shape
    sqnr = 10 * torch.log10(ref.pow(2).mean() / (out - ref).pow(2).mean())
    assert sqnr > 30, f"SQNR {sqnr:.1f} dB"
