"""A training stage's per-epoch state (teacher, distill): what a stage killed mid-training resumes from.

After every epoch ``fdkd.pipeline.train.fit`` hands ``TrainState.save`` everything the next epoch depends on
(``train.capture``: weights, optimizer and loss-scaler state, weight averages, the best state so far, RNG states of
torch, numpy, Python and the augmenters, the sampler's generators, the records); rank 0 writes it atomically to
``<run>/<stage>.train-state.pt`` (``fdkd.artifacts.TRAIN_STATE``), every rank reads it. A stage that starts while a
state of the same configuration is on disk (``state_key``: the config sections that shape the stage, its input
files' sha256, the world size) says so on its first line ("resuming distill from epoch k of n") and continues after
epoch k; with ``threads: 1`` it ends with the weights an uninterrupted run ends with. A state of another
configuration is named and ignored (overwritten after the first epoch). The stage deletes the state once its
outputs are written (``finish``).

The schedule depends on the epochs planned, so the state is only resumed when the budget is the same.

``FDKD_KILL_AFTER_EPOCH=<stage>:<k>`` (tests) kills the process with SIGKILL right after epoch k's state is on
disk: a real, unclean death mid-stage.

Why by hand, not Lightning Fabric or HF Accelerate: both would save the same items (Fabric's ``save`` takes the
objects you pass it; Accelerate's ``save_state`` records a sampler position only for its prepared DataLoaders), but
this loop's sampler is a seeded generator over row numbers (a streamed dataset's DataLoader only decodes the batches
that generator picked, and its random crops are a function of (seed, epoch, row): nothing of the loader's to save),
trains several candidates with one optimizer or one scaler per candidate, and runs DDP through
``fdkd.pipeline.accel``: adopting either means rewriting that loop around the library for the same ~100 lines of
state, and a large dependency in the pipeline.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

from fdkd import artifacts

FORMAT = "fdkd-train-state/1"
KILL_ENV = "FDKD_KILL_AFTER_EPOCH"


def state_key(sections: dict, inputs: list[Path], world: int) -> str:
    """Identity of a stage's training: its config sections, its input files' sha256 and the world size."""
    return artifacts.digest({"config": sections, "world": world,
                             "inputs": {str(p): artifacts.sha256_file(p) for p in inputs if Path(p).exists()}})


class TrainState:
    """The per-epoch state file of one training stage (``stage``: "distill", "teacher.image")."""

    def __init__(self, path: Path, key: str, stage: str) -> None:
        self.path, self.key, self.stage = Path(path), key, stage
        self.saved: dict | None = None  # the state read at the start, if any
        self.epoch = 0  # epochs it holds
        self.epochs = 0  # epochs planned when it was written

    @classmethod
    def open(cls, path: Path, key: str, stage: str, announce: bool = True) -> TrainState:
        """The stage's state: the saved one if ``path`` holds one of this ``key``; says which on the console."""
        from fdkd.pipeline.progress import console

        state = cls(path, key, stage)
        if not state.path.exists():
            return state
        try:
            saved = torch.load(state.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a state is never half-written (atomic), but a foreign or damaged file is possible
            if announce:
                console.print(f"{stage}: ignoring unreadable training state {state.path} ({type(e).__name__}: {e}); "
                              "starting over", highlight=False, markup=False)
            return state
        if not isinstance(saved, dict) or saved.get("format") != FORMAT or saved.get("key") != key:
            if announce:
                console.print(f"{stage}: the training state at {state.path} belongs to another configuration or "
                              "input; starting over", highlight=False, markup=False)
            return state
        state.saved, state.epoch, state.epochs = saved, int(saved["epoch"]), int(saved["epochs"])
        if announce:
            console.print(f"resuming {stage} from epoch {state.epoch} of {state.epochs} ({state.path.name})",
                          highlight=False, markup=False)
        return state

    @property
    def records(self) -> list[dict]:
        """The records of the epochs the saved state holds (what ``metrics.jsonl`` starts from on resume)."""
        return list(self.saved["records"]) if self.saved is not None else []

    def save(self, captured: dict, epoch: int, epochs: int, write: bool) -> None:
        """After epoch ``epoch`` of ``epochs``: rank 0 (``write``) writes the state atomically; then the kill hook."""
        if write:
            with artifacts.atomic_write(self.path) as f:
                torch.save({"format": FORMAT, "key": self.key, "stage": self.stage, "epoch": epoch,
                            "epochs": epochs, **captured}, f)
        hook = os.environ.get(KILL_ENV, "")
        if hook and hook == f"{self.stage}:{epoch}":
            os.kill(os.getpid(), signal.SIGKILL)  # the test hook: die as a killed job does, nothing flushed

    def finish(self, write: bool = True) -> None:
        """The stage's outputs are written: its training state is no longer needed."""
        if write:
            self.path.unlink(missing_ok=True)
