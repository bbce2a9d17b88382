"""A tiny pre-LayerNorm transformer classifier, trained in a few seconds on a synthetic task, for SmoothQuant tests.

``plant_outliers`` scales a few hidden channels of every LayerNorm up and divides the Linear columns that read
them by the same factor: the float function is unchanged, but those channels now dominate the activation range,
as the outlier channels of real transformers do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, SEQ, WIDTH, HEADS = 32, 16, 64, 4


class Block(nn.Module):
    def __init__(self, width: int, heads: int, activation: str = "relu") -> None:
        super().__init__()
        self.heads, self.activation = heads, getattr(F, activation)
        self.ln1 = nn.LayerNorm(width)
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.ln2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (f(h).view(b, t, self.heads, d // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.o((probs @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(self.activation(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    def __init__(self, layers: int = 2, activation: str = "relu") -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.pos = nn.Parameter(torch.zeros(SEQ, WIDTH))
        self.blocks = nn.ModuleList(Block(WIDTH, HEADS, activation) for _ in range(layers))
        self.ln_f = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x).mean(dim=1))


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences; the label says whether low tokens (< VOCAB / 2) are the majority."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    return ids, ((ids < VOCAB // 2).sum(1) > SEQ // 2).long()


def trained(steps: int = 60, seed: int = 0, activation: str = "relu") -> TinyTransformer:
    """Train on one thread (a couple of seconds; more threads only contend on a shared 2-core machine)."""
    torch.manual_seed(seed)
    model = TinyTransformer(activation=activation)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    ids, labels = data(steps * 32, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in range(steps):
            batch = slice(step * 32, step * 32 + 32)
            loss = F.cross_entropy(model(ids[batch]), labels[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def plant_outliers(model: TinyTransformer, channels: tuple[int, ...] = (3, 17, 40), factor: float = 60.0) -> None:
    """Scale ``channels`` of every block's LayerNorms by ``factor`` and compensate in the Linears reading them."""
    with torch.no_grad():
        for block in model.blocks:
            for norm, readers in ((block.ln1, (block.q, block.k, block.v)), (block.ln2, (block.fc1,))):
                for c in channels:
                    norm.weight[c] *= factor
                    norm.bias[c] *= factor
                    for linear in readers:
                        linear.weight[:, c] /= factor
