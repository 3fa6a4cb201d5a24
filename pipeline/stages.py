"""Shared plumbing of the training stages: seeding, threads, tensors, teacher resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fdkd import artifacts
from fdkd.pipeline.config import RunConfig, config_to_dict, dump_config


def setup(cfg: RunConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)


def tensors(ds) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return {m: torch.from_numpy(a) for m, a in ds.x.items()}, torch.from_numpy(ds.y)


def teacher_path(cfg: RunConfig, modality: str) -> Path:
    """Where ``fdkd teacher`` writes the teacher for ``modality`` (and where distill looks)."""
    return cfg.run_dir / artifacts.TEACHER.format(modality=modality)


def load_teacher(cfg: RunConfig, modality: str, ds=None):
    """The frozen teacher for ``modality``: ``teacher.checkpoint`` if set (and of that modality), else the run's.

    ``ds`` (the dataset) supplies input channels and class count for a bare state dict.
    """
    from fdkd.pipeline.models.checkpoint import (
        FORMAT,
        is_torchscript,
        load_foreign_teacher,
        model_from_checkpoint,
        read_checkpoint,
    )

    external = cfg.teacher.checkpoint if modality == cfg.teacher.modality else None
    path = external or teacher_path(cfg, modality)
    if not path.exists():
        raise FileNotFoundError(f"no {modality} teacher at {path}: run `fdkd teacher --modality {modality}` "
                                "first, or set teacher.checkpoint")
    if not is_torchscript(path):
        try:
            ckpt = read_checkpoint(path)
        except ValueError:
            ckpt = None
        if ckpt is not None and ckpt.get("format") == FORMAT:
            if ckpt.get("modality") not in (None, modality):
                raise ValueError(f"teacher {path} was trained on {ckpt['modality']}, not {modality}")
            return freeze(model_from_checkpoint(ckpt)), path
    arch = None
    if cfg.teacher.checkpoint_arch is not None and ds is not None:
        arch = arch_dict(cfg.teacher.checkpoint_arch, ds.x[modality].shape[1:], ds.num_classes)
    return freeze(load_foreign_teacher(path, arch)), path


def freeze(model):
    """Eval mode and no gradients (works for TorchScript modules too)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def arch_dict(model_cfg, input_shape: tuple[int, ...], num_classes: int) -> dict:
    """Constructor arguments of an encoder for inputs of ``input_shape`` ([C, H, W]); stored in checkpoints."""
    return {"arch": model_cfg.arch, "in_chans": input_shape[0], "num_classes": num_classes,
            "width": model_cfg.width, "depth": model_cfg.depth,
            "stem_stride": model_cfg.resolved_stem_stride(input_shape)}


def save_with_config(path: Path, model, arch: dict, cfg: RunConfig, ds, modality: str, metrics: dict,
                     training_state: dict | None = None) -> None:
    """Save a checkpoint and its resolved config next to it.

    ``training_state`` holds training-only parameters (projector, shared classifiers) for
    analysis; they are never part of the exported student.
    """
    from fdkd.pipeline.models.checkpoint import save_checkpoint

    save_checkpoint(path, model, arch, modality=modality, class_names=ds.class_names,
                    preprocessing=ds.frontends[modality].to_dict(), metrics=metrics,
                    dataset={"path": str(ds.path), "sha256": artifacts.sha256_file(ds.path)},
                    config=config_to_dict(cfg),
                    training_state={k: v.detach().cpu() for k, v in (training_state or {}).items()})
    artifacts.write_text(artifacts.config_sidecar(path), dump_config(cfg))


def reset_log(path: Path):
    """A metrics.jsonl writer starting from an empty file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return lambda rec: artifacts.append_jsonl(path, rec)
