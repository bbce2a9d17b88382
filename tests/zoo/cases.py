"""The zoo's table: every architecture with its family, its builder and its inputs at the two checked shapes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tests.zoo import hf_models
from tests.zoo.blocks import BLOCKS

Batch = dict[str, torch.Tensor] | torch.Tensor
# The shapes a file is checked at: the first is also the calibration and export shape (batch, length)
SHAPES = ((2, 8), (3, 13))


@dataclass(frozen=True)
class Case:
    """One architecture of the zoo: ``build()`` gives the float model (eval, seeded), ``inputs(shape, seed)`` a
    batch at ``SHAPES[shape]`` (``tests/zoo/test_zoo.py`` picks which run in ``make test``)."""

    name: str
    family: str
    make: Callable[[], nn.Module]
    inputs: Callable[[int, int], Batch]

    def build(self) -> nn.Module:
        """The model, seeded; BatchNorm statistics are taken from four batches, as training leaves them (random
        weights under the default statistics, mean 0 and variance 1, fade a deep CNN's activations to ~0)."""
        torch.manual_seed(0)
        model = self.make()
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if norms:
            for bn in norms:
                bn.reset_parameters()  # also gamma 1, beta 0 (some transformers inits leave them tiny)
                bn.momentum = None  # a cumulative average
            model.train()
            batches = [self.inputs(0, seed) for seed in range(50, 54)]
            if isinstance(batches[0], dict):
                batch = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}  # type: ignore[index]
            else:
                batch = torch.cat(batches)  # type: ignore[arg-type]
            with torch.no_grad():
                model(**batch) if isinstance(batch, dict) else model(batch)
        return model.eval()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tokens(shape: int, seed: int) -> Batch:
    batch, seq = SHAPES[shape]
    ids = torch.randint(3, hf_models.VOCAB, (batch, seq), generator=_gen(seed))
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # padding in the first row
    return {"input_ids": ids, "attention_mask": mask}


def _images(size: int) -> Callable[[int, int], Batch]:
    def make(shape: int, seed: int) -> Batch:
        return torch.randn(SHAPES[shape][0], 3, size, size, generator=_gen(seed))

    return make


def _pixels(shape: int, seed: int) -> Batch:
    return {"pixel_values": _images(32)(shape, seed)}


def _mel(shape: int, seed: int) -> Batch:
    return {"input_features": torch.randn(SHAPES[shape][0], 16, 32, generator=_gen(seed))}


def _wave(shape: int, seed: int) -> Batch:
    return {"input_values": torch.randn(SHAPES[shape][0], 400, generator=_gen(seed))}


def _hf(builder: Callable) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        return builder(transformers)

    return make



CASES: list[Case] = (
    [Case(n, "encoder", _hf(b), _tokens) for n, b in hf_models.ENCODERS.items()]
    + [Case(n, "decoder", _hf(b), _tokens) for n, b in hf_models.DECODERS.items()]
    + [Case(n, "vision", _hf(b), _pixels) for n, b in hf_models.VISION.items()]
    + [Case("whisper-encoder", "audio", _hf(hf_models.AUDIO["whisper-encoder"]), _mel),
       Case("wav2vec2", "audio", _hf(hf_models.AUDIO["wav2vec2"]), _wave)]
    + [Case(n, "block", b, _images(16)) for n, b in BLOCKS.items()]
)
