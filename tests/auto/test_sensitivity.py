"""``mixq.auto.sensitivity`` helpers: how many batches the model-output SQNR needs."""

from __future__ import annotations

import torch

from mixq.auto.sensitivity import MODEL_SQNR_ELEMENTS, enough_batches


def test_model_output_sqnr_uses_the_leading_batches_that_hold_enough_values():
    big = torch.zeros(MODEL_SQNR_ELEMENTS)
    small = torch.zeros(MODEL_SQNR_ELEMENTS // 4)
    assert enough_batches([big, big]) == 1  # one batch of a transformer's hidden states is plenty
    assert enough_batches([small] * 8) == 4
    assert enough_batches([small, small]) == 2  # fewer values than wanted: every batch
    assert enough_batches([{"logits": small, "ids": torch.zeros(10, dtype=torch.long)}] * 5) == 4  # floats only
