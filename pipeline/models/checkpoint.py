"""Checkpoints that carry their constructor arguments, so they load with no code edits.

An fdkd checkpoint (``teacher.<modality>.pt``, ``student.pt``) is a dict::

    {"format": "fdkd-checkpoint", "version": 1, "arch": {arch, in_chans, num_classes, width, depth},
     "state_dict": ..., "modality": ..., "class_names": [...], "preprocessing": {...},
     "metrics": {...}, "config": {...resolved run config...}}

Foreign teachers load too: a TorchScript module exposing ``forward_features`` and
``forward_head``, or a bare state dict plus the architecture it fits (``teacher.checkpoint_arch``).
The training stages save through ``save_with_config`` (the checkpoint, and its resolved config beside it).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from torch import nn

from fdkd import artifacts
from fdkd.pipeline.config import RunConfig, config_to_dict, dump_config
from fdkd.pipeline.models.encoders import build_encoder

FORMAT = "fdkd-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, model: nn.Module, arch: dict, **extra) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with artifacts.atomic_write(path) as f:
        torch.save({"format": FORMAT, "version": VERSION, "arch": arch, "state_dict": state, **extra}, f)


def save_with_config(path: Path, model, arch: dict, cfg: RunConfig, ds, modality: str, metrics: dict,
                     training_state: dict | None = None) -> None:
    """Save a checkpoint and its resolved config next to it.

    ``training_state`` holds training-only parameters (projector, shared classifiers) for
    analysis; they are never part of the exported student.
    """
    save_checkpoint(path, model, arch, modality=modality, class_names=ds.class_names,
                    preprocessing=ds.frontends[modality].to_dict(), metrics=metrics,
                    dataset={"path": str(ds.path), "sha256": artifacts.sha256_file(ds.path)},
                    config=config_to_dict(cfg),
                    training_state={k: v.detach().cpu() for k, v in (training_state or {}).items()})
    artifacts.write_text(artifacts.config_sidecar(path), dump_config(cfg))


def read_checkpoint(path: Path) -> dict:
    """The checkpoint dict, checked for format; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise ValueError(f"checkpoint {path} is not a readable torch file: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not an fdkd checkpoint (no 'format': '{FORMAT}' entry)")
    if ckpt.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')} is not supported (want {VERSION})")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    model = build_encoder(**ckpt["arch"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def load_model(path: Path) -> tuple[nn.Module, dict]:
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt), ckpt


def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips with a ``<name>/code/`` folder; torch.save checkpoints have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n for n in zf.namelist())


def load_foreign_teacher(path: Path, arch: dict | None) -> nn.Module:
    """A TorchScript teacher, or a bare state dict for ``arch``; must expose the features/head split."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"teacher checkpoint not found: {path}")
    if is_torchscript(path):
        model = torch.jit.load(str(path), map_location="cpu")
    else:
        if arch is None:
            raise ValueError(f"{path} is a state dict, not TorchScript: set teacher.checkpoint_arch "
                             "to the architecture it was saved from")
        from fdkd.pipeline.models.init import load_init

        model = build_encoder(**arch)
        # the state dict in the architecture's own key layout (timm, torchvision) or fdkd's; strict, head included
        load_init(model, path, f"teacher.checkpoint (teacher.checkpoint_arch {arch['arch']})", replace_head=False)
    for method in ("forward_features", "forward_head"):
        if not hasattr(model, method):
            raise ValueError(f"teacher {path} has no {method}(); export it with @torch.jit.export on both "
                             "forward_features(x) -> [B, D] and forward_head(f) -> logits")
    return model.eval()


def describe(path: Path) -> dict:
    """What a report says of a model file: its architecture and the weight file it started from (path, sha256)."""
    path = Path(path)
    if is_torchscript(path):
        return {"arch": "torchscript", "path": str(path), "init": None}
    try:
        ckpt = read_checkpoint(path)
    except ValueError:
        return {"arch": "state dict", "path": str(path), "init": None}
    return {"arch": ckpt["arch"]["arch"], "path": str(path), "init": ckpt.get("metrics", {}).get("init"),
            "input_norm": ckpt["arch"].get("input_norm")}
