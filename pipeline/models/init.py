"""Initialise an encoder from a local weight file (``teacher.model.init``, ``distill.student.init``).

Reads ``.pth``/``.pt``/``.bin`` (``torch.load``, weights only) or ``.safetensors``: a state dict in the
architecture's own key layout (as timm or torchvision save it; a ``state_dict``/``model`` wrapper and DDP's
``module.`` prefix are taken off), or an fdkd checkpoint (its ``state_dict``, in the wrapper's ``model.*`` layout).
The load is strict, with two named exceptions, each said on the console and in the returned record:

- the classifier: when its shape differs from the data's classes (a 1000-class ImageNet head on a 5-class
  task), the file's head is dropped and the freshly initialised one kept;
- the stem: a 3-channel first convolution on 1-channel data is summed over its input channels (what timm does
  when it adapts pretrained weights to ``in_chans=1``).

Anything else (a missing or unexpected key, another shape) is an error naming the file and the first keys.
Nothing is downloaded, ever.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fdkd import artifacts

SHOWN = 5  # keys named per kind of mismatch in an error


class InitError(ValueError):
    """The weight file does not fit the encoder; the message names the file and the first mismatching keys."""


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """(tensors by name, whether the file is an fdkd checkpoint) of a weight file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init weights not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise InitError(f"{path}: reading .safetensors needs the safetensors package "
                            "(pip install 'fdkd[timm]' brings it)") from None
        try:
            return load_file(str(path)), False
        except Exception as e:  # safetensors raises its own error types for a bad header
            raise InitError(f"{path} is not a readable safetensors file: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise InitError(f"{path} is not a readable torch weight file: {e}") from None
    if not isinstance(obj, dict):
        raise InitError(f"{path} holds a {type(obj).__name__}, not a state dict (save model.state_dict())")
    fdkd = obj.get("format") == "fdkd-checkpoint"
    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise InitError(f"{path} holds no tensors")
    return state, fdkd


def _first(items) -> str:
    items = list(items)
    return ", ".join(map(str, items[:SHOWN])) + (f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else "")


def load_init(encoder: nn.Module, path: Path, what: str, say=None, replace_head: bool = True) -> dict:
    """Load ``path`` into ``encoder`` (see the module doc); returns the record the reports keep.

    ``what`` names the setting in messages (``teacher.model.init``); ``say`` prints a line (the console).
    ``replace_head=False`` (a frozen teacher's weights) makes a classifier of another shape an error too.
    """
    path = Path(path)
    state, fdkd = read_state_dict(path)
    # the file's layout: an fdkd checkpoint is the wrapper's (``model.*``); anything else is the backbone's own
    wrapped = hasattr(encoder, "model")
    target = encoder.model if wrapped and not fdkd else encoder
    inner = "model." if wrapped and fdkd else ""  # the backbone's names as the target spells them
    own = target.state_dict()
    notes = []
    head = inner + encoder.head_prefix() if wrapped else "head"
    head_keys = {k for k in own if k.startswith(head + ".")}
    replaced = False
    if (replace_head and all(k in state for k in head_keys)
            and any(state[k].shape != own[k].shape for k in head_keys)):
        weight = f"{head}.weight"
        notes.append(f"classifier {head} replaced: {state[weight].shape[0]} classes in the file, "
                     f"{own[weight].shape[0]} in the data" if weight in own else f"classifier {head} replaced")
        for k in head_keys:
            state.pop(k)
        replaced = True
    if wrapped:
        key = inner + encoder.first_conv() + ".weight"
        w, mine = state.get(key), own.get(key)
        if (w is not None and mine is not None and w.ndim == 4 and mine.shape[1] == 1 and w.shape[1] != 1
                and w.shape[0] == mine.shape[0] and w.shape[2:] == mine.shape[2:]):
            state[key] = w.sum(dim=1, keepdim=True)
            notes.append(f"stem {key} summed over its {w.shape[1]} input channels for 1-channel input")
    missing = [k for k in own if k not in state and not (replaced and k in head_keys)
               and not k.endswith("num_batches_tracked")]  # absent from checkpoints of torch < 0.4.1
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
              for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"missing: {_first(missing)}" if missing else "",
                 f"unexpected: {_first(unexpected)}" if unexpected else "",
                 f"shape mismatch: {_first(shapes)}" if shapes else ""]
        raise InitError(f"{what}: {path} does not fit {getattr(encoder, 'arch', type(encoder).__name__)}; "
                        + "; ".join(p for p in parts if p))
    target.load_state_dict(state, strict=False)  # strict by the checks above (head and counters excepted)
    for n in notes:
        if say is not None:
            say(f"{what}: {n}")
    return {"path": str(path), "sha256": artifacts.sha256_file(path), "head_replaced": replaced, "notes": notes}
