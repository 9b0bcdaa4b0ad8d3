"""Prepacked Linear layers for planning on a CPU.

A one-environment decision is about a hundred matrix products of 5 to 18 rows against
0.25 to 1 MB of weights. At that shape MKL's GEMM (what F.linear calls) runs at under
half of this CPU's large-matrix rate; oneDNN, given the weights once in its blocked
layout, is 1.6-2.8x faster on the planner's large layers (2-core AMD EPYC, measured)
and applies the GELU in the same pass. It is the op torch.compile's CPU backend emits for packed low-precision weights;
here it is used without compiling, so eager planning keeps PyTorch's own random numbers
and needs no warm-up.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

Module = TypeVar("Module", bound=nn.Module)


def available(device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """Whether this PyTorch build and CPU can pack `dtype` weights for `device`: oneDNN on
    a CPU, and for bf16 a CPU with AVX512-BF16-capable instructions (AVX2-only CPUs have
    no packed bf16 path, F.linear still works there)."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.float32:
        return True
    return dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class PackedLinear(nn.Module):
    """An inference-only copy of a Linear (and of the GELU after it, once fused), weights packed
    for batches of about `rows` rows (any row count works; the hint picks the blocking).
    The packed weight is an opaque oneDNN tensor: it cannot be copied, saved or moved, so
    pack again from the original module instead."""

    def __init__(self, layer: nn.Linear, rows: int) -> None:
        super().__init__()
        weight = layer.weight.detach()
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight, rows), persistent=False)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone(), persistent=False)
        self.post, self.algorithm = "none", ""  # pack() sets "gelu" and its approximation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.post, [], self.algorithm)


MIN_WEIGHTS = 1 << 17
"""Smallest Linear worth packing. The packed op costs about 15 µs a call whatever its size,
F.linear 5 µs on a small layer: measured here, F.linear wins below 256 x 512 weights (the
planner's input, output and attention-projection layers, inverse dynamics) and the packed
op above (qkv and the MLP, 1.6-2.8x)."""


def pack(module: Module, rows: int, min_weights: int = MIN_WEIGHTS) -> Module:
    """A copy of `module` whose Linear layers of at least `min_weights` weights are packed; a
    packed Linear followed by a GELU in a Sequential becomes one fused layer. For inference
    only: the copy has no gradients."""
    return _packed(copy.deepcopy(module).eval().requires_grad_(False), rows, min_weights)


def _packed(module: Module, rows: int, min_weights: int) -> Module:
    if isinstance(module, nn.Linear):
        return PackedLinear(module, rows) if module.weight.numel() >= min_weights else module  # type: ignore[return-value]
    if isinstance(module, nn.Sequential):
        layers: list[nn.Module] = []
        for layer in module:
            if (
                isinstance(layer, nn.GELU)
                and layers
                and isinstance(layers[-1], PackedLinear)
                and layers[-1].post == "none"
            ):
                layers[-1].post, layers[-1].algorithm = "gelu", layer.approximate
            else:
                layers.append(_packed(layer, rows, min_weights))
        return nn.Sequential(*layers)  # type: ignore[return-value]
    for name, child in module.named_children():
        setattr(module, name, _packed(child, rows, min_weights))
    return module
