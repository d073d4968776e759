"""A GAN step that updates the discriminator before the generator's backward.

`loss_g` is computed through the discriminator, so its graph saved the discriminator's
weights. `opt_d.step()` then overwrites those weights in place, and `loss_g.backward()`
needs the old ones: stock PyTorch fails with "one of the variables needed for gradient
computation has been modified by an inplace operation ... Good luck!". `gradguard run`
names the step, the layer and the fix.

    gradguard run examples/gan_step_order.py            # the bug
    gradguard run examples/gan_step_order.py --fixed    # backward first, then the step
"""
import torch
import torch.nn as nn

from example_utils import example_args


class Generator(nn.Module):
    def __init__(self, noise=4, hidden=16, out=8):
        super().__init__()
        self.fc1 = nn.Linear(noise, hidden)
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, z):
        return self.fc2(torch.relu(self.fc1(z)))


class Discriminator(nn.Module):
    def __init__(self, inp=8, hidden=16):
        super().__init__()
        self.fc1 = nn.Linear(inp, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return torch.sigmoid(self.fc2(h))  # saves fc2.weight for backward


def train_step(gen, disc, opt_g, opt_d, z, real, fixed):
    fake = gen(z)
    loss_d = -(torch.log(disc(real)) + torch.log(1 - disc(fake.detach()))).mean()
    loss_g = -torch.log(disc(fake)).mean()  # the generator's loss goes through disc
    opt_d.zero_grad()
    loss_d.backward()
    opt_g.zero_grad()
    if fixed:
        loss_g.backward()  # the generator's backward first ...
        opt_d.step()  # ... then the discriminator may change its weights
    else:
        opt_d.step()  # BUG: changes disc's weights while loss_g still needs them
        loss_g.backward()
    opt_g.step()
    return loss_d.item(), loss_g.item()


def main():
    args = example_args(__doc__, fixed_help="backward first, then the step")
    torch.manual_seed(0)
    gen, disc = Generator(), Discriminator()
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    for step in range(args.steps):
        z, real = torch.randn(32, 4), torch.randn(32, 8) + 2.0
        loss_d, loss_g = train_step(gen, disc, opt_g, opt_d, z, real, args.fixed)
        print(f"step {step}: loss_d {loss_d:.9g} loss_g {loss_g:.9g}")


if __name__ == "__main__":
    main()
