"""What the example scripts share: their command line and a plain training loop."""
import argparse


def example_args(doc, fixed_help):
    """``--fixed`` (run the corrected code) and ``--steps N``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--fixed", action="store_true", help=fixed_help)
    parser.add_argument("--steps", type=int, default=3)
    return parser.parse_args()


def train(loss_of_step, opt, steps):
    """``steps`` ordinary steps: forward (``loss_of_step(step)``), backward, update."""
    for step in range(steps):
        loss = loss_of_step(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step}: loss {loss.item():.9g}")
