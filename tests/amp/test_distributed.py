"""Two CPU processes (gloo): DDP and FSDP2 ranks skip the same steps and end with identical weights."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp
from torch import nn

import mixq.amp as amp

WORLD = 2


def _worker(rank: int, mode: str, out: str) -> None:
    # a file rendezvous: no TCP port to race for with other processes on a busy machine
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 10))
    accumulation = 1
    if mode == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
        accumulation = 2
    else:
        from torch.distributed.fsdp import fully_shard

        for layer in (model[0], model[3]):
            fully_shard(layer)
        fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mp = amp.MixedPrecision(
        model, opt, "fp16", accumulation_steps=accumulation, loss_scale=amp.LossScale(growth_interval=2)
    )
    assert mp.keep_fp32 == {"1": "type LayerNorm"}
    for micro in range(6 * accumulation):
        g = torch.Generator().manual_seed(100 * rank + micro)
        x, y = torch.randn(16, 64, generator=g), torch.randint(0, 10, (16,), generator=g)
        if mode == "ddp" and rank == 0 and micro == 4:
            x[0, 0] = float("inf")  # one rank's local gradients overflow before the all-reduce
        with mp.autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        mp.backward(loss)
        if mode == "fsdp" and rank == 1 and micro == 2:
            model[3].weight.grad.to_local().view(-1)[0] = float("inf")  # only this rank's shard overflows
        mp.step()
        mp.zero_grad()
    params = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
    torch.save({"params": [p.detach().clone() for p in params], "stats": mp.stats.to_dict()}, f"{out}/rank{rank}.pt")
    dist.barrier()  # both ranks done with every collective before gloo is torn down (avoids an abort under load)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_ranks_skip_the_same_steps_and_agree(tmp_path, mode):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    tmp.spawn(_worker, args=(mode, str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert r0["stats"]["skipped_at"] == r1["stats"]["skipped_at"] == [2]
    scales = [rec[1] for rec in r0["stats"]["history"]]
    assert scales == [rec[1] for rec in r1["stats"]["history"]]
    assert scales == [2.0**16, 2.0**17, 2.0**16, 2.0**16, 2.0**17, 2.0**17]
    for a, b in zip(r0["params"], r1["params"], strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
