"""QAT under DDP (two CPU processes, gloo): learnable scales start, and stay, identical on every rank."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp
from torch import nn

import mixq

WORLD = 2


def _worker(rank: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(128, 5))
    qat = mixq.prepare_qat(model, weight_bits=4, learnable_scales=True)
    ddp = nn.parallel.DistributedDataParallel(qat)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    for step in range(4):  # each rank sees its own data, so first-batch ranges differ between ranks
        x = torch.randn(8, 3, 16, generator=torch.Generator().manual_seed(10 * rank + step)) * (1 + rank)
        opt.zero_grad()
        ddp(x).pow(2).mean().backward()
        opt.step()
    x = torch.randn(4, 3, 16)
    with torch.no_grad():
        exact = torch.equal(qat.eval()(x), mixq.convert(qat)(x))
    torch.save({"params": [p.detach().clone() for p in qat.parameters()], "exact": exact}, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_keep_identical_learned_scales(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    tmp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert r0["exact"] and r1["exact"]
    assert len(r0["params"]) == 11  # conv, BN, linear weights and biases plus 5 learned scales
    for a, b in zip(r0["params"], r1["params"], strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
