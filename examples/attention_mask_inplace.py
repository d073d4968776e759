"""Self-attention that masks padded keys by writing into the softmax output in place.

`softmax` saves its output for backward. Zeroing the padded positions afterwards with
`masked_fill_` writes over that saved tensor, and stock PyTorch fails at `backward()`.
The fix masks the scores *before* the softmax, out of place (which is also what makes
the remaining weights sum to one).

    gradguard run examples/attention_mask_inplace.py            # the bug
    gradguard run examples/attention_mask_inplace.py --fixed    # mask the scores
"""
import math

import torch
import torch.nn as nn

from example_utils import example_args, train


class SelfAttention(nn.Module):
    def __init__(self, dim, fixed):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.fixed = fixed

    def forward(self, x, pad):  # pad: [batch, keys], True where the key is padding
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        mask = pad[:, None, :]
        if self.fixed:
            weights = scores.masked_fill(mask, float("-inf")).softmax(dim=-1)
        else:
            weights = scores.softmax(dim=-1)  # softmax saves its output
            weights.masked_fill_(mask, 0.0)  # BUG: zeroes padded keys in the saved output
        return self.out(weights @ v)


def main():
    args = example_args(__doc__, fixed_help="mask the scores out of place")
    torch.manual_seed(0)
    attn = SelfAttention(16, fixed=args.fixed)
    head = nn.Linear(16, 1)
    lengths = torch.tensor([10, 7, 4, 9])
    pad = torch.arange(10)[None, :] >= lengths[:, None]
    keep = (~pad).unsqueeze(-1).float()

    def loss_of_step(step):
        x, y = torch.randn(4, 10, 16), torch.randn(4, 1)
        pooled = (attn(x, pad) * keep).sum(1) / keep.sum(1)
        return nn.functional.mse_loss(head(pooled), y)

    opt = torch.optim.AdamW([*attn.parameters(), *head.parameters()], lr=1e-3)
    train(loss_of_step, opt, args.steps)


if __name__ == "__main__":
    main()
