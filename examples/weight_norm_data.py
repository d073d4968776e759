"""A cosine classifier that re-normalises its class vectors through `.data` too early.

The class vectors (`head.weight`) are kept on the unit sphere by dividing them through
`.data` -- but between the forward and `loss.backward()`. The forward saved the weight for
backward; `.data` writes bypass the version counter, so stock PyTorch says nothing and
backpropagates through the *new* weights: the gradients are silently wrong. `gradguard
run` reports the write, the save and the fix; the script runs to the end.

    gradguard run examples/weight_norm_data.py            # the bug (silent in PyTorch)
    gradguard run examples/weight_norm_data.py --fixed    # normalise after the step
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from example_utils import example_args


class CosineClassifier(nn.Module):
    def __init__(self, inp, dim, classes, scale=10.0):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(inp, dim), nn.Tanh())
        self.head = nn.Linear(dim, classes, bias=False)
        self.scale = scale

    def forward(self, x):
        feats = F.normalize(self.encoder(x), dim=-1)
        return self.scale * self.head(feats)  # saves head.weight for backward


def normalise_(weight):
    weight.data.div_(weight.data.norm(dim=1, keepdim=True))  # a write autograd cannot see


def main():
    args = example_args(__doc__, fixed_help="normalise after the step")
    torch.manual_seed(0)
    model = CosineClassifier(12, 16, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(args.steps):
        x, y = torch.randn(64, 12), torch.randint(0, 5, (64,))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        if args.fixed:
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.head.weight.div_(model.head.weight.norm(dim=1, keepdim=True))
        else:
            normalise_(model.head.weight)  # BUG: before backward, which needs the old weight
            loss.backward()
            opt.step()
        print(f"step {step}: loss {loss.item():.9g}")


if __name__ == "__main__":
    main()
