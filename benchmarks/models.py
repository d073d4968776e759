"""Small, random-init models shared by `benchmarks/overhead.py` and `tests/test_real_models.py`.

Nothing here downloads anything: every model is built from a config with random weights.
Each builder takes a ``size`` ("tiny" for the test suite, "bench" for the benchmark) and a
``seed``, and returns a `Workload`: the model, one fixed input batch, and a loss function.
Same seed -> bit-identical model and batch, so two runs can be compared with `torch.equal`.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict

import torch
from torch import nn

__all__ = ["Workload", "BUILDERS", "build", "gpt2", "bert", "resnet", "transformer_encoder",
           "mlp", "train_step"]


@dataclass
class Workload:
    name: str
    model: nn.Module
    batch: Any
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]
    config: str  # one-line human description of the configuration

    def loss(self) -> torch.Tensor:
        return self.loss_fn(self.model, self.batch)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers logs/warns about configs and missing weights; keep test output clean."""
    loggers = [logging.getLogger(n) for n in ("transformers", "transformers.modeling_utils",
                                                "transformers.configuration_utils")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


_SIZES: Dict[str, Dict[str, Dict[str, int]]] = {
    "gpt2": {
        "tiny": dict(n_layer=2, n_embd=64, n_head=2, vocab=128, seq=16, batch=2),
        "bench": dict(n_layer=4, n_embd=256, n_head=4, vocab=8192, seq=128, batch=8),
    },
    "bert": {
        "tiny": dict(layers=2, hidden=64, heads=2, inter=128, vocab=128, seq=16, batch=2),
        "bench": dict(layers=4, hidden=256, heads=4, inter=1024, vocab=8192, seq=128, batch=8),
    },
    "resnet": {
        "tiny": dict(width=8, depths=1, image=32, batch=2, labels=10),
        "bench": dict(width=32, depths=2, image=64, batch=16, labels=100),
    },
    "transformer_encoder": {
        "tiny": dict(layers=2, d_model=64, nhead=2, ff=128, seq=16, batch=2),
        "bench": dict(layers=4, d_model=256, nhead=4, ff=1024, seq=128, batch=8),
    },
    "mlp": {
        "tiny": dict(inp=16, hidden=32, out=4, batch=8),
        "bench": dict(inp=256, hidden=1024, out=64, batch=64),
    },
}


def gpt2(size: str = "tiny", seed: int = 0) -> Workload:
    from transformers import GPT2Config, GPT2LMHeadModel

    s = _SIZES["gpt2"][size]
    torch.manual_seed(seed)
    with _quiet_transformers():
        cfg = GPT2Config(
            vocab_size=s["vocab"], n_positions=s["seq"], n_embd=s["n_embd"],
            n_layer=s["n_layer"], n_head=s["n_head"], bos_token_id=0, eos_token_id=0,
            pad_token_id=0, attn_implementation="eager",
        )
        model = GPT2LMHeadModel(cfg)
    model.loss_type = "ForCausalLM"  # the class name does not say it; avoids a warning
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, s["vocab"], (s["batch"], s["seq"]), generator=gen)

    def loss_fn(m: nn.Module, b: torch.Tensor) -> torch.Tensor:
        return m(input_ids=b, labels=b).loss

    desc = (f"GPT2LMHeadModel {s['n_layer']}L d{s['n_embd']} h{s['n_head']} "
            f"vocab {s['vocab']}, batch {s['batch']}x{s['seq']} tokens")
    return Workload("gpt2", model, ids, loss_fn, desc)


def bert(size: str = "tiny", seed: int = 0) -> Workload:
    from transformers import BertConfig, BertForMaskedLM

    s = _SIZES["bert"][size]
    torch.manual_seed(seed)
    with _quiet_transformers():
        cfg = BertConfig(
            vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"], intermediate_size=s["inter"],
            max_position_embeddings=s["seq"], pad_token_id=0, attn_implementation="eager",
        )
        model = BertForMaskedLM(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(1, s["vocab"], (s["batch"], s["seq"]), generator=gen)
    labels = torch.full_like(ids, -100)
    mask = torch.rand(ids.shape, generator=gen) < 0.15
    mask[:, 0] = True  # at least one masked position per row
    labels[mask] = ids[mask]
    masked = ids.masked_fill(mask, 1)
    attn = torch.ones_like(ids)

    def loss_fn(m: nn.Module, b: Any) -> torch.Tensor:
        i, a, lab = b
        return m(input_ids=i, attention_mask=a, labels=lab).loss

    desc = (f"BertForMaskedLM {s['layers']}L d{s['hidden']} h{s['heads']} ff{s['inter']} "
            f"vocab {s['vocab']}, batch {s['batch']}x{s['seq']} tokens")
    return Workload("bert", model, (masked, attn, labels), loss_fn, desc)


def resnet(size: str = "tiny", seed: int = 0) -> Workload:
    from transformers import ResNetConfig, ResNetForImageClassification

    s = _SIZES["resnet"][size]
    w = s["width"]
    torch.manual_seed(seed)
    with _quiet_transformers():
        cfg = ResNetConfig(
            num_channels=3, embedding_size=w, hidden_sizes=[w, 2 * w, 4 * w, 8 * w],
            depths=[s["depths"]] * 4, layer_type="basic", num_labels=s["labels"],
        )
        model = ResNetForImageClassification(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(s["batch"], 3, s["image"], s["image"], generator=gen)
    y = torch.randint(0, s["labels"], (s["batch"],), generator=gen)

    def loss_fn(m: nn.Module, b: Any) -> torch.Tensor:
        px, lab = b
        return m(pixel_values=px, labels=lab).loss

    desc = (f"ResNetForImageClassification basic {[s['depths']] * 4} widths "
            f"{w}-{8 * w}, batch {s['batch']}x3x{s['image']}x{s['image']}")
    return Workload("resnet", model, (x, y), loss_fn, desc)


class _EncoderLM(nn.Module):
    """nn.TransformerEncoder with an input projection and a regression head."""

    def __init__(self, d_model: int, nhead: int, ff: int, layers: int, norm_first: bool,
                 dropout: float) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, nhead, ff, dropout=dropout,
                                           batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model),
                                             enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)).squeeze(-1)


def transformer_encoder(size: str = "tiny", seed: int = 0, norm_first: bool = False,
                        dropout: float = 0.1) -> Workload:
    s = _SIZES["transformer_encoder"][size]
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _EncoderLM(s["d_model"], s["nhead"], s["ff"], s["layers"], norm_first, dropout)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(s["batch"], s["seq"], s["d_model"], generator=gen)
    y = torch.randn(s["batch"], s["seq"], generator=gen)

    def loss_fn(m: nn.Module, b: Any) -> torch.Tensor:
        inp, target = b
        return nn.functional.mse_loss(m(inp), target)

    desc = (f"nn.TransformerEncoder {s['layers']}L d{s['d_model']} h{s['nhead']} "
            f"ff{s['ff']} dropout {dropout} norm_first={norm_first}, "
            f"batch {s['batch']}x{s['seq']}")
    return Workload("transformer_encoder", model, (x, y), loss_fn, desc)


def mlp(size: str = "tiny", seed: int = 0) -> Workload:
    s = _SIZES["mlp"][size]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(s["inp"], s["hidden"]), nn.ReLU(inplace=True),
                          nn.Linear(s["hidden"], s["hidden"]), nn.GELU(),
                          nn.Linear(s["hidden"], s["out"]))
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(s["batch"], s["inp"], generator=gen)
    y = torch.randint(0, s["out"], (s["batch"],), generator=gen)

    def loss_fn(m: nn.Module, b: Any) -> torch.Tensor:
        inp, lab = b
        return nn.functional.cross_entropy(m(inp), lab)

    return Workload("mlp", model, (x, y), loss_fn,
                    f"MLP {s['inp']}-{s['hidden']}-{s['hidden']}-{s['out']}, batch {s['batch']}")


BUILDERS: Dict[str, Callable[..., Workload]] = {
    "gpt2": gpt2,
    "bert": bert,
    "resnet": resnet,
    "transformer_encoder": transformer_encoder,
    "mlp": mlp,
}


def build(name: str, size: str = "tiny", seed: int = 0, **kwargs: Any) -> Workload:
    return BUILDERS[name](size=size, seed=seed, **kwargs)


def train_step(work: Workload, opt: torch.optim.Optimizer) -> torch.Tensor:
    """One ordinary training step: forward, loss, backward, step, zero_grad."""
    loss = work.loss()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()
