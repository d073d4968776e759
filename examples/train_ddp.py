"""Distributed data parallel training (gloo, CPU) with the `.data` bug on one rank.

Each rank trains the cosine classifier of `weight_norm_data.py` on its own batches;
DDP averages the gradients. On `--bug-rank` (default 1) the class vectors are
re-normalised through `.data` between the forward and `backward()` -- silently wrong
gradients, which DDP then averages into every rank. Under `gradguard run` each rank
reports for itself, prefixed `[rankN]`, and `--json report.json` writes one file per rank:

    torchrun --nproc-per-node 2 -m gradguard run --json report.json examples/train_ddp.py
    torchrun --nproc-per-node 2 -m gradguard run examples/train_ddp.py --bug-rank -1  # clean
"""
import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from weight_norm_data import CosineClassifier, normalise_


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bug-rank", type=int, default=1, help="-1: no rank has the bug")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same initial weights on every rank
    model = DistributedDataParallel(CosineClassifier(12, 16, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(1000 + rank)  # each rank its own batches
    for step in range(args.steps):
        x, y = torch.randn(32, 12, generator=data), torch.randint(0, 5, (32,), generator=data)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        if rank == args.bug_rank:
            normalise_(model.module.head.weight)  # BUG: before backward, on this rank only
        loss.backward()  # DDP all-reduces the gradients here
        opt.step()
        print(f"rank {rank} step {step}: loss {loss.item():.9g}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
