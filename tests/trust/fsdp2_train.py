"""A 3-block MLP with in-place ReLUs under FSDP2 (`fully_shard`) on gloo CPU ranks.

Run with `python -m torch.distributed.run --standalone --nproc-per-node 2 fsdp2_train.py`
(optionally `-m gradguard run` in front of the script). Each rank prints its losses with
`repr(float)` so two runs can be compared bit for bit.
"""
import gc
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard


def block(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True))


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    width = 16
    model = nn.Sequential(block(width), block(width), block(width), nn.Linear(width, 1))
    for layer in model[:3]:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(100 + rank)
    for step in range(3):
        x = torch.randn(8, width, generator=gen)
        target = torch.randn(8, 1, generator=gen)
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad()
        print(f"rank {rank} step {step} loss {loss.item()!r}", flush=True)
    # FSDP2 keeps its last collectives' work objects (holding tensors) until its state
    # goes: drop it while the interpreter is alive, or gloo's threads may free them during
    # finalization and abort ("terminate called without an active exception"; stock
    # PyTorch, about 1 run in 15 here).
    del model, opt, loss
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
