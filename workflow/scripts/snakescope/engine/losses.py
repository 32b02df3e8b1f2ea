"""losses: a plain function as a loss module, so every task's loss is an nn.Module taking (logits, label)."""

from __future__ import annotations

from torch import nn


class FunctionLoss(nn.Module):
    """`fn(logits, label)` as a module (MONAI's and torch's losses are modules; a lambda is not)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, logits, label):
        return self.fn(logits, label)
