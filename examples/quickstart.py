"""gradguard quickstart: a GAN step with the classic ordering bug, caught and explained.

The discriminator is updated (`opt_d.step()`) before the generator's loss is
backpropagated through it. `loss_g`'s graph saved the discriminator's weights, the step
overwrote them in place, and stock PyTorch fails with "one of the variables needed for
gradient computation has been modified by an inplace operation ... Good luck!".
Under `gradguard.detect()` the error names the step, the parameter and the fix.

Run:  python examples/quickstart.py
"""
import sys

import torch
import torch.nn as nn

import gradguard


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 1)

    def forward(self, x):
        return torch.sigmoid(self.fc(x))


def train_step(gen, disc, opt_g, opt_d, z, real, fixed):
    fake = gen(z)
    loss_d = -(torch.log(disc(real)) + torch.log(1 - disc(fake.detach()))).mean()
    loss_g = -torch.log(disc(fake)).mean()
    opt_d.zero_grad()
    loss_d.backward()
    if fixed:
        opt_g.zero_grad()
        loss_g.backward()  # the generator's backward first ...
        opt_d.step()  # ... then the discriminator may change its weights
    else:
        opt_d.step()  # BUG: overwrites weights that loss_g's graph saved
        opt_g.zero_grad()
        loss_g.backward()
    opt_g.step()


def main():
    torch.manual_seed(0)
    gen, disc = nn.Linear(4, 8), Discriminator()
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    z, real = torch.randn(16, 4), torch.randn(16, 8)

    print("== the buggy step, under gradguard.detect() ==\n")
    try:
        with gradguard.detect():
            train_step(gen, disc, opt_g, opt_d, z, real, fixed=False)
    except gradguard.InplaceConflictError as err:
        print(err)
    else:
        sys.exit("expected gradguard to catch the GAN ordering bug")

    print("\n== the fixed step, under gradguard.detect() ==\n")
    with gradguard.detect() as session:
        for _ in range(3):
            train_step(gen, disc, opt_g, opt_d, z, real, fixed=True)
    print(f"3 fixed steps: {len(session.conflicts)} conflicts")


if __name__ == "__main__":
    main()
