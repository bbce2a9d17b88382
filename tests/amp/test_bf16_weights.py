"""The bf16-weights mode (``master_weights=True``): bf16 weights in the forward with no per-call weight casts, fp32
masters and optimizer state, fp32 norms and ``keep_fp32`` modules, skipped non-finite steps, exact resume, DDP."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import mixq.amp as amp


def _model() -> nn.Sequential:
    torch.manual_seed(0)  # widths chosen so no activation shares a shape with a weight
    return nn.Sequential(nn.Linear(24, 40), nn.LayerNorm(40), nn.GELU(), nn.Linear(40, 56), nn.ReLU(),
                         nn.Linear(56, 7))


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 24, generator=g), torch.randint(0, 7, (5,), generator=g)


def _build(**kw):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt, amp.MixedPrecision(model, opt, "bf16", master_weights=True, **kw)


def _train(model, mp, steps: range, poison: tuple[int, ...] = ()) -> list[bool]:
    applied = []
    for step in steps:
        x, y = _batch(step)
        with mp.autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        mp.backward(loss)
        if step in poison:
            model[3].weight.grad[0, 0] = float("nan")
        applied.append(mp.step())
        mp.zero_grad()
    return applied


class _Casts(TorchDispatchMode):
    """Records the shapes of the tensors every dtype conversion (what autocast emits) was applied to."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten._to_copy, torch.ops.aten.to, torch.ops.aten.copy_):
            self.shapes.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


def test_forward_computes_with_bf16_weights_and_casts_none():
    model, opt, mp = _build(keep_fp32=["5"])
    seen = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen[name] = (module.weight.dtype, out.dtype)

        return hook

    for name in ("0", "1", "3", "5"):
        model.get_submodule(name).register_forward_hook(record(name))
    x, y = _batch(0)
    with _Casts() as casts, mp.autocast():
        loss = nn.functional.cross_entropy(model(x), y)
    assert seen == {"0": (torch.bfloat16, torch.bfloat16), "1": (torch.float32, torch.float32),
                    "3": (torch.bfloat16, torch.bfloat16), "5": (torch.float32, torch.float32)}
    weight_shapes = {tuple(p.shape) for p in model.parameters()}
    assert not weight_shapes & set(casts.shapes), "autocast cast a weight in the forward"
    assert mp.keep_fp32 == {"1": "type LayerNorm", "5": "pattern '5'"}
    # the optimizer holds fp32 masters of the bf16 weights, and the fp32 parameters themselves
    held = [p for g in opt.param_groups for p in g["params"]]
    assert all(p.dtype == torch.float32 for p in held) and len(held) == 8
    assert {id(p) for p in held} >= {id(p) for p in (*model[1].parameters(), *model[5].parameters())}
    mp.backward(loss)
    assert mp.step() is True
    assert all(s["exp_avg"].dtype == torch.float32 for s in opt.state.values())
    for p, master in mp.master.pairs:  # the model computes with the rounded masters
        assert p.dtype == torch.bfloat16 and master.dtype == torch.float32
        torch.testing.assert_close(p, master.to(torch.bfloat16), atol=0, rtol=0)


def test_non_finite_step_changes_nothing():
    model, opt, mp = _build()
    _train(model, mp, range(3))
    params = [p.detach().clone() for p in model.parameters()]
    masters = [m.detach().clone() for _, m in mp.master.pairs]
    state = copy.deepcopy(opt.state_dict())
    assert _train(model, mp, range(3, 4), poison=(3,)) == [False]
    for a, b in zip(params, model.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=0, rtol=0)
    for a, (_, b) in zip(masters, mp.master.pairs, strict=True):
        torch.testing.assert_close(b, a, atol=0, rtol=0)
    torch.testing.assert_close(opt.state_dict(), state, atol=0, rtol=0)
    assert mp.stats.skipped_at == [3]
    assert _train(model, mp, range(4, 5)) == [True]


def test_resume_is_exact():
    model, opt, mp = _build()
    _train(model, mp, range(0, 4), poison=(2,))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "mp": mp.state_dict()}, buf)
    _train(model, mp, range(4, 9), poison=(6,))
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2, opt2, mp2 = _build()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    mp2.load_state_dict(ckpt["mp"])
    _train(model2, mp2, range(4, 9), poison=(6,))
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=0, rtol=0)
    for (_, a), (_, b) in zip(mp.master.pairs, mp2.master.pairs, strict=True):
        torch.testing.assert_close(b, a, atol=0, rtol=0)
    assert mp2.stats.skipped_at == mp.stats.skipped_at == [2, 6]


def test_ddp_needs_the_model_cast_before_wrapping(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(_model())
        with pytest.raises(ValueError, match="cast_for_ddp"):
            amp.MixedPrecision(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1), "bf16", master_weights=True)
        assert not any("_mixq_fp32" in dir(m.forward) for m in ddp.modules())  # nothing left installed
    finally:
        dist.destroy_process_group()


def _ddp_worker(rank: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    model = nn.parallel.DistributedDataParallel(amp.MixedPrecision.cast_for_ddp(_model(), "bf16"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mp = amp.MixedPrecision(model, opt, "bf16", master_weights=True, accumulation_steps=2)
    for micro in range(8):
        g = torch.Generator().manual_seed(100 * rank + micro)
        x, y = torch.randn(5, 24, generator=g), torch.randint(0, 7, (5,), generator=g)
        if rank == 1 and micro == 3:
            x[0, 0] = float("inf")  # one rank's gradients overflow before the all-reduce
        with mp.autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        mp.backward(loss)
        mp.step()
        mp.zero_grad()
    torch.save({"params": [p.detach().clone() for p in model.parameters()],
                "masters": [m.detach().clone() for _, m in mp.master.pairs],
                "skipped": mp.stats.skipped_at}, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_skip_together_and_agree(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    tmp.spawn(_ddp_worker, args=(str(tmp_path),), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["skipped"] == r1["skipped"] == [1]
    assert [p.dtype for p in r0["params"]].count(torch.bfloat16) == 6  # three Linear layers; LayerNorm fp32
    for a, b in zip(r0["params"] + r0["masters"], r1["params"] + r1["masters"], strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
