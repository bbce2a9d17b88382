"""A graph captured in training mode follows train()/eval() as its model does (``mixq.quant.train_graph``): its
dropouts and BatchNorms switch with the mode, and a graph whose training-mode capture fixed any other branch, or
that draws random numbers some other way, is refused with the reason."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixq.quant.graph_export import export_graph


class _Block(nn.Module):
    """Linear -> dropout module -> BatchNorm1d (outside any quantized layer) -> functional dropout -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.drop, self.bn, self.fc2 = nn.Linear(8, 16), nn.Dropout(0.3), nn.BatchNorm1d(16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.drop(self.fc1(x)).transpose(1, 2)).transpose(1, 2)
        h = F.dropout(h, p=0.2 if self.training else 0.0, training=self.training)
        return self.fc2(h)


class _Branching(_Block):
    """Scales its hidden state in training only: a branch the training-mode capture fixes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h * 2.0 if self.training else h)


class _Noisy(_Block):
    """Adds uniform noise in training, drawn with torch.rand (not a dropout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h + torch.rand_like(h) if self.training else h)


class _DropPath(nn.Module):
    """Stochastic depth as vision models write it: drops whole samples in training with torch.rand."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.floor(torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype) + 1 - self.p)
        return x / (1 - self.p) * keep


class _Residual(_Block):
    """A residual branch behind drop-path."""

    def __init__(self) -> None:
        super().__init__()
        self.fc2, self.drop_path = nn.Linear(16, 8), _DropPath(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.fc2(torch.relu(self.fc1(x))))


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(seed))


def _capture(model: nn.Module):
    torch.manual_seed(0)
    return export_graph(model.eval(), _x(), ["fc1", "fc2"], training=True)[:2]


def test_dropouts_and_batchnorm_follow_the_mode_as_in_the_model():
    torch.manual_seed(0)
    model = _Block()
    gm, why = _capture(model)
    assert gm is not None, why
    assert gm.mixq_dropouts == 2
    x = _x(1)
    with torch.no_grad():
        assert torch.equal(gm.eval()(x), model.eval()(x))  # no dropout, BatchNorm on running statistics
        gm.train()
        first, second = gm(x), gm(x)
    assert not torch.equal(first, second)  # dropout draws new masks
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(3)
        expected = model.train()(x)
        torch.manual_seed(3)
        got = gm.train()(x)
    assert torch.allclose(got, expected, atol=1e-6)  # the same masks from the same seed: the same function
    before = model.bn.running_mean.clone()
    with torch.no_grad():
        gm.train()(x)
    assert not torch.equal(model.bn.running_mean, before)  # the model's own BatchNorm trains inside the graph


def test_the_capture_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = _Block().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _capture(model)
    assert not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_a_training_branch_the_capture_fixed_is_refused():
    torch.manual_seed(0)
    gm, why = _capture(_Branching())
    assert gm is None
    assert "eval mode" in why and "differs" in why


def test_random_numbers_other_than_dropout_are_refused():
    torch.manual_seed(0)
    gm, why = _capture(_Noisy())
    assert gm is None
    assert "rand" in why and "train()/eval()" in why


def test_a_stateless_module_drawing_random_numbers_becomes_a_call_of_itself():
    torch.manual_seed(0)
    model = _Residual()
    gm, why = _capture(model)
    assert gm is not None, why
    assert gm.mixq_dropouts == 1 and gm.get_submodule("drop_path") is model.drop_path
    x = _x(1)
    with torch.no_grad():
        assert torch.equal(gm.eval()(x), model.eval()(x))
        gm.train()
        outputs = {bool(torch.equal(gm(x)[i], x[i])) for i in range(4) for _ in range(8)}
    assert outputs == {True, False}  # some samples dropped (only the residual left), some kept
