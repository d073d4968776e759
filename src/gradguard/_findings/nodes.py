"""Backward node names, for people: ``SigmoidBackward0`` -> ``sigmoid``."""
from __future__ import annotations

import re
from typing import Optional

_NODE = re.compile(r"^(.*?)Backward(\d+)?$")
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def forward_op(node_name: Optional[str]) -> Optional[str]:
    """The forward op a backward node belongs to: ``SigmoidBackward0`` -> ``sigmoid``,
    ``NativeLayerNormBackward0`` -> ``native_layer_norm``; a custom ``autograd.Function``'s
    node (``MyFnBackward``, no number) keeps the class name (``MyFn``); other names are
    returned as they are."""
    if not node_name:
        return None
    m = _NODE.match(node_name)
    if not m:
        return node_name
    base = m.group(1)
    if m.group(2) is None:  # custom autograd.Function: keep the class name
        return base
    return _CAMEL.sub("_", base).lower()


def describe_node(node_name: str) -> str:
    """``TanhBackward0`` -> ``tanh (TanhBackward0)``: the op first, the node for grep."""
    m = _NODE.match(node_name)
    if not m or m.group(2) is None:  # not a numbered builtin node: the name says it all
        return node_name
    return f"{forward_op(node_name)} ({node_name})"
