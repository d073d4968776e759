"""A gated block whose `ReLU(inplace=True)` overwrites a sigmoid's output.

`torch.sigmoid` saves its *output* for backward (its gradient is `y * (1 - y)`). An
in-place ReLU applied to that output writes over the saved tensor, and stock PyTorch fails
at `backward()` with "... output 0 of SigmoidBackward0, is at version 1; expected version 0
instead". `gradguard run` points at the module that wrote and the line that saved.

    gradguard run examples/sigmoid_relu_inplace.py            # the bug
    gradguard run examples/sigmoid_relu_inplace.py --fixed    # ReLU() out of place
"""
import torch
import torch.nn as nn

from example_utils import example_args, train


class GatedBlock(nn.Module):
    def __init__(self, dim, inplace):
        super().__init__()
        self.value = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, dim)
        self.act = nn.ReLU(inplace=inplace)

    def forward(self, x):
        g = torch.sigmoid(self.gate(x))  # sigmoid saves its output g
        g = self.act(g)  # BUG with inplace=True: writes over g
        return x + g * self.value(x)


def main():
    args = example_args(__doc__, fixed_help="use ReLU() out of place")
    torch.manual_seed(0)
    model = nn.Sequential(GatedBlock(16, inplace=not args.fixed), nn.Linear(16, 1))

    def loss_of_step(step):
        x, y = torch.randn(64, 16), torch.randn(64, 1)
        return nn.functional.mse_loss(model(x), y)

    train(loss_of_step, torch.optim.SGD(model.parameters(), lr=0.05), args.steps)


if __name__ == "__main__":
    main()
