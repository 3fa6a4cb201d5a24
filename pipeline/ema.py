"""An exponential moving average of a model's weights (Polyak averaging), as timm's ``ModelEmaV2`` keeps it.

``optim.ema_decay`` d turns it on for a training run: after every optimizer step each floating-point
entry of the model's state dict (parameters and BatchNorm running statistics) moves to
``avg = decay * avg + (1 - decay) * weight``, where ``decay = min(d, (1 + step) / (10 + step))``
(the warm-up that keeps the first steps' random weights from dominating); integer buffers (BatchNorm's
batch counter) are copied. Validation, checkpoint selection and the shipped weights then use the
average instead of the last step's weights: an average over the last ~1/(1-d) steps of a noisy
trajectory, which on the built-in run varied less from seed to seed than the last weights did
(docs/results.md section 6).
"""

from __future__ import annotations

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"optim.ema_decay must be in [0, 1), got {decay}")
        self.decay, self.steps = decay, 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay_at(self.steps)
        for k, v in model.state_dict().items():
            avg = self.state[k]
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                avg.copy_(v)
        self.steps += 1

    def state_dict(self) -> dict:
        """The average and its step count (a stage's per-epoch training state: ``fdkd.pipeline.resume``)."""
        return {"state": self.state, "steps": self.steps, "decay": self.decay}

    def load_state_dict(self, saved: dict) -> None:
        for k, v in saved["state"].items():
            self.state[k].copy_(v)
        self.steps = int(saved["steps"])

    def swapped_in(self, model: nn.Module) -> _Swap:
        """``with avg.swapped_in(model):`` the model holds the averaged weights; its own come back after."""
        return _Swap(model, self.state)


class _Swap:
    def __init__(self, model: nn.Module, state: dict) -> None:
        self.model, self.state, self.saved = model, state, None

    def __enter__(self) -> nn.Module:
        self.saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.state)
        return self.model

    def __exit__(self, *exc) -> None:
        self.model.load_state_dict(self.saved)
