"""A TorchScript teacher as users bring one: a scripted module exporting ``forward_features`` and
``forward_head`` (what ``teacher.checkpoint`` accepts), made from any fdkd encoder for the tests."""

from __future__ import annotations

from pathlib import Path

import torch


class Scriptable(torch.nn.Module):
    def __init__(self, m: torch.nn.Module):
        super().__init__()
        self.m = m

    @torch.jit.export
    def forward_features(self, x):
        return self.m.forward_features(x)

    @torch.jit.export
    def forward_head(self, f):
        return self.m.forward_head(f)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def save_scripted(model: torch.nn.Module, path: Path) -> Path:
    torch.jit.script(Scriptable(model)).save(str(path))
    return path
