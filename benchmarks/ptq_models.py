"""Models and inputs for ``bench_ptq.py``: a ResNet-18-shaped CNN and a MiniLM-sized BERT encoder, random weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

Batch = torch.Tensor | dict[str, torch.Tensor]


class BasicBlock(nn.Module):
    """conv3x3-bn-relu, conv3x3-bn, residual add (1x1 conv-bn projection when the shape changes), relu.

    Each ReLU is its own module (called once), so mixq's dataflow probe can fuse it into the preceding conv.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class ResNet18(nn.Module):
    """ResNet-18 layout: 7x7/2 stem + 3x3/2 max pool, stages of two BasicBlocks at 64/128/256/512, pool, fc."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, cin = [], 64
        for i, cout in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class BertEncoder(nn.Module):
    """``transformers.BertModel`` returning only the last hidden state (batch, tokens, hidden)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@dataclass
class Workload:
    """A model plus the input generator and accuracy proxy the benchmark uses for it."""

    name: str
    model: nn.Module
    shape_note: str
    seq_len: int = 0
    image: int = 0
    vocab: int = 0

    def batch(self, n: int, seed: int, padded: bool = False) -> Batch:
        """A deterministic random batch of ``n`` samples."""
        g = torch.Generator().manual_seed(seed)
        if self.image:
            return torch.randn(n, 3, self.image, self.image, generator=g)
        ids = torch.randint(1000, self.vocab, (n, self.seq_len), generator=g)
        ids[:, 0] = 101  # [CLS]
        mask = torch.ones(n, self.seq_len, dtype=torch.int64)
        if padded:  # calibration batches: variable real lengths, like padded sentences
            lengths = torch.randint(self.seq_len // 4, self.seq_len + 1, (n,), generator=g)
            mask = (torch.arange(self.seq_len)[None, :] < lengths[:, None]).to(torch.int64)
            ids = ids * mask
        return {"input_ids": ids, "attention_mask": mask}


def _params(model: nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M"


def settle_batchnorm(model: nn.Module, image: int, seed: int, rounds: int, batch: int) -> nn.Module:
    """``model`` in eval mode with random BatchNorm affine parameters and running statistics averaged over ``rounds``
    batches of random images (seeded by ``seed + 1``), so folding BatchNorm into a conv is not the identity."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the warm-up batches
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
    model.train()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _ in range(rounds):
            model(torch.randn(batch, 3, image, image, generator=g))
    return model.eval()


def make_cnn(image: int, seed: int = 0) -> Workload:
    """ResNet-18 with random weights; BatchNorm statistics are set from random images so folding is non-trivial."""
    torch.manual_seed(seed)
    model = settle_batchnorm(ResNet18(), image, seed, rounds=4, batch=8)
    return Workload("cnn", model, f"ResNet-18 ({_params(model)} params), 3x{image}x{image} random images", image=image)


def make_bert(seq_len: int, seed: int = 0) -> Workload:
    """all-MiniLM-L6-v2-sized BERT (hidden 384, 6 layers, 12 heads, intermediate 1536), random init."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512)
    bert = BertModel(config, add_pooling_layer=False).eval()
    model = BertEncoder(bert).eval()
    return Workload("bert", model, f"BERT encoder, all-MiniLM-L6-v2 size ({_params(model)} params), {seq_len} random "
                    "tokens", seq_len=seq_len, vocab=config.vocab_size)


def to_feeds(batch: Batch, input_names: list[str]) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds for a batch (a tensor goes to the single input; a dict maps by name)."""
    if isinstance(batch, torch.Tensor):
        (name,) = input_names
        return {name: batch.numpy()}
    return {name: batch[name].numpy() for name in input_names}


def accuracy_proxy(kind: str, out: np.ndarray, ref: np.ndarray) -> float:
    """CNN: mean |out - ref| / std(ref). BERT: mean cosine similarity of the [CLS] vectors of the last hidden state."""
    if kind == "cnn":
        return float(np.mean(np.abs(out - ref)) / np.std(ref))
    a, b = out[:, 0, :].astype(np.float64), ref[:, 0, :].astype(np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(cos.mean())
