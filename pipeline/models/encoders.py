"""Image and spectrogram encoders with a features/head split (timm's convention).

``ConvEncoder`` is a small residual CNN for any [C, H, W] input (an image, or a log-mel
spectrogram as a one-channel image); ``width`` and ``depth`` make the teacher much larger than
the student. ``TimmEncoder`` and ``TorchvisionEncoder`` wrap any timm or torchvision architecture by name
(never a download: weights come from a local file, ``fdkd.pipeline.models.init``). ``build_encoder`` is the only
place that maps a config's ``arch`` to a class; ``arch_dict`` turns a config's encoder settings and an input shape
into the constructor arguments ``build_encoder`` takes (and checkpoints store).

An ecosystem encoder may carry its own input normalisation (``input_norm``: the architecture's pretrained
mean/std, applied to fdkd's scalar-standardised input as one per-channel affine map inside the model, so the
exported graph and the server's preprocessing stay what they are) and a feature tap by module name
(``tap_module``: a forward hook, for architectures whose interesting features are not the head's input).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output before its final ReLU (residual sum)."""
        y = torch.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(y)) + self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.preactivation(x))


class ConvEncoder(nn.Module):
    """Stem + ``depth`` residual stages (width doubles and resolution halves after the first).

    ``stem_stride`` 2 halves large inputs (spectrograms) before the first block.
    Feature width D = width * 2**(depth-1); features are the globally average-pooled output of
    the last block, i.e. exactly what feeds the linear head.
    """

    def __init__(self, in_chans: int, num_classes: int, width: int = 16, depth: int = 2, stem_stride: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        blocks, c = [], width
        for i in range(depth):
            c_out = width * 2**i
            blocks.append(ResidualBlock(c, c_out, stride=1 if i == 0 else 2))
            c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.num_features = c
        self.head = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean(dim=(2, 3))

    def forward_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled features feeding the head, pooled **pre-activation** output of the last block).

        The second is the reference code's distillation tap (``distill.feature_tap: pre``).
        """
        h = self.blocks[:-1](self.stem(x))
        pre = self.blocks[-1].preactivation(h)
        return torch.relu(pre).mean(dim=(2, 3)), pre.mean(dim=(2, 3))

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ImageNet's per-channel mean/std: what torchvision's classification weights expect (their transforms' constants)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pooled(t) -> torch.Tensor:
    """A tapped module's output as [B, D]: feature maps averaged over space, token sequences over tokens."""
    if isinstance(t, (tuple, list)):
        t = t[0]
    if t.ndim == 4:
        return t.mean(dim=(2, 3))
    if t.ndim == 3:
        return t.mean(dim=1)
    return t.flatten(1)


class _Ecosystem(nn.Module):
    """What the timm and torchvision wrappers share: the backbone as ``self.model`` (its own key layout, so its
    state dict loads as saved), the input normalisation and the feature tap by module name."""

    arch: str

    def __init__(self, input_norm: dict | None, tap_module: str | None) -> None:
        super().__init__()
        self.input_norm = input_norm
        self.tap_module = tap_module
        scale = shift = torch.empty(0)
        if input_norm is not None:
            # x (fdkd's input) = (raw - data_mean) / data_std; the backbone wants (raw - mean_c) / std_c
            # data_mean/data_std: per channel (a scalar in checkpoints written before per-channel statistics)
            mean, std = torch.tensor(input_norm["mean"]), torch.tensor(input_norm["std"])
            data_mean = torch.tensor(input_norm["data_mean"], dtype=torch.float64).float()
            data_std = torch.tensor(input_norm["data_std"], dtype=torch.float64).float()
            scale = data_std / std
            shift = (data_mean - mean) / std
        # not persistent: the state dict stays the backbone's (``model.*``), so weight files load unchanged
        self.register_buffer("norm_scale", scale.view(1, -1, 1, 1).float(), persistent=False)
        self.register_buffer("norm_shift", shift.view(1, -1, 1, 1).float(), persistent=False)

    def _post_init(self) -> None:
        if self.tap_module is not None:
            modules = dict(self.model.named_modules())
            if self.tap_module not in modules:
                near = [n for n in modules if n and n.split(".")[0] == self.tap_module.split(".")[0]][:8]
                raise ValueError(f"{self.arch} has no module {self.tap_module!r} to tap (tap_module); modules "
                                 f"under that name: {near or [n for n in modules if n and '.' not in n]}")

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.norm_scale + self.norm_shift if self.input_norm is not None else x

    def head_prefix(self) -> str:
        """The classifier's name in the backbone's state dict (its keys are ``<prefix>.weight`` ...)."""
        head = self.classifier()
        return next(n for n, m in self.model.named_modules() if m is head)

    def first_conv(self) -> str:
        """The name of the first convolution (the one whose input channels follow the data)."""
        return next(n for n, m in self.model.named_modules() if isinstance(m, nn.Conv2d))

    def forward_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features feeding the head, pooled output of ``tap_module``), through a forward hook."""
        if self.tap_module is None:
            raise ValueError(f"{self.arch}: distill.feature_tap=pre needs the encoder's tap_module set (a module "
                             "name, e.g. 'layer4' or 'blocks.5')")
        seen = []
        handle = dict(self.model.named_modules())[self.tap_module].register_forward_hook(
            lambda _m, _i, out: seen.append(out))
        try:
            f = self.forward_features(x)
        finally:
            handle.remove()
        return f, _pooled(seen[-1])

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.classifier()(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalise(x))


class TimmEncoder(_Ecosystem):
    """Any timm model by name, split into pooled features and classifier (timm's own split)."""

    def __init__(self, name: str, in_chans: int, num_classes: int, input_norm: dict | None = None,
                 tap_module: str | None = None) -> None:
        super().__init__(input_norm, tap_module)
        timm = _import("timm", name)
        self.arch = f"timm:{name}"
        try:
            self.model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes)
        except RuntimeError as e:  # timm raises RuntimeError("Unknown model ...")
            raise ValueError(f"timm has no architecture {name!r}: {e}") from None
        self.num_features = self.model.num_features
        self._post_init()

    def classifier(self) -> nn.Module:
        return self.model.get_classifier()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(self.normalise(x)), pre_logits=True)


class TorchvisionEncoder(_Ecosystem):
    """Any torchvision classification model by name. torchvision models have no features/head split: the head
    is the last ``nn.Linear``, and the features are its input, caught by a forward pre-hook."""

    def __init__(self, name: str, in_chans: int, num_classes: int, input_norm: dict | None = None,
                 tap_module: str | None = None) -> None:
        super().__init__(input_norm, tap_module)
        tv = _import("torchvision", name)
        self.arch = f"torchvision:{name}"
        try:
            self.model = tv.models.get_model(name, weights=None, num_classes=num_classes)
        except ValueError as e:  # torchvision: "Unknown model ..."
            raise ValueError(f"torchvision has no architecture {name!r}: {e}") from None
        if in_chans != 3:  # torchvision builds for RGB only: the stem convolution takes the data's channels
            conv_name = self.first_conv()
            conv = self.model.get_submodule(conv_name)
            parent, _, leaf = conv_name.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, leaf,
                    nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode))
        linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"torchvision:{name} has no nn.Linear classifier to split features from")
        self._head = [linears[-1]]  # a list: not registered twice (it lives in self.model)
        self.num_features = linears[-1].in_features
        self._post_init()

    def classifier(self) -> nn.Module:
        return self._head[0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        seen = []
        handle = self.classifier().register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            self.model(self.normalise(x))
        finally:
            handle.remove()
        return seen[-1]


def _import(package: str, name: str):
    try:
        return __import__(package)
    except ImportError:
        raise RuntimeError(f"arch '{package}:{name}' needs {package}: pip install 'fdkd[{package}]'") from None


# arch prefix -> wrapper class (``conv`` is built in and takes other arguments)
ECOSYSTEMS = {"timm": TimmEncoder, "torchvision": TorchvisionEncoder}


def build_encoder(arch: str, in_chans: int, num_classes: int, width: int = 16, depth: int = 2,
                  stem_stride: int = 1, input_norm: dict | None = None, tap_module: str | None = None) -> nn.Module:
    """Construct an encoder from the constructor arguments a checkpoint stores."""
    if arch == "conv":
        return ConvEncoder(in_chans, num_classes, width=width, depth=depth, stem_stride=stem_stride)
    prefix, _, name = arch.partition(":")
    if prefix in ECOSYSTEMS and name:
        return ECOSYSTEMS[prefix](name, in_chans, num_classes, input_norm=input_norm, tap_module=tap_module)
    raise ValueError(f"unknown arch {arch!r}: expected 'conv', 'timm:<name>' or 'torchvision:<name>'")


def pretrained_mean_std(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean/std an ecosystem architecture's pretrained weights expect (timm: its
    ``pretrained_cfg``; torchvision: ImageNet's, which every torchvision classification weight uses)."""
    prefix, _, name = arch.partition(":")
    if prefix == "timm":
        timm = _import("timm", name)
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is not None and cfg.mean and cfg.std:
            return tuple(cfg.mean), tuple(cfg.std)
    return IMAGENET_MEAN, IMAGENET_STD


def input_norm(model_cfg, modality: str, channels: int, frontend) -> dict | None:
    """The encoder's own input normalisation (see ``ModelConfig.norm``), or None for fdkd's standardisation."""
    if model_cfg.mean is not None:
        mean, std, source = model_cfg.mean, model_cfg.std, "setting"
    else:
        mode = model_cfg.norm
        if mode == "auto":
            mode = "model" if model_cfg.init is not None and modality == "image" else "dataset"
        if mode == "dataset":
            return None
        if modality != "image":
            raise ValueError(f"{model_cfg.arch}: norm 'model' applies a pretrained image mean/std, but this "
                             f"encoder reads {modality}; set norm: dataset (or mean/std)")
        mean, std = pretrained_mean_std(model_cfg.arch)
        source = "pretrained"
        if len(mean) != channels and channels == 1:  # a grey image: the channels' average, as timm adapts stems
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"{model_cfg.arch}: mean/std have {len(mean)}/{len(std)} values but the {modality} input "
                         f"has {channels} channels")
    data_mean, data_std = (frontend.mean, frontend.std) if frontend is not None else (0.0, 1.0)

    def per_channel(v) -> list[float]:  # a frontend's statistic: one value, or one per channel (RGB)
        vals = [float(x) for x in np.atleast_1d(np.asarray(v, np.float64))]
        return vals * channels if len(vals) == 1 else vals

    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "source": source,
            "data_mean": per_channel(data_mean), "data_std": per_channel(data_std)}


def arch_dict(model_cfg, input_shape: tuple[int, ...], num_classes: int, modality: str = "image",
              frontend=None) -> dict:
    """Constructor arguments of an encoder for inputs of ``input_shape`` ([C, H, W]); stored in checkpoints.

    ``frontend`` (the dataset's, for this modality) gives the standardisation an ecosystem encoder's own
    normalisation undoes."""
    d = {"arch": model_cfg.arch, "in_chans": input_shape[0], "num_classes": num_classes,
         "width": model_cfg.width, "depth": model_cfg.depth,
         "stem_stride": model_cfg.resolved_stem_stride(input_shape)}
    if model_cfg.arch != "conv":
        d["input_norm"] = input_norm(model_cfg, modality, input_shape[0], frontend)
        d["tap_module"] = model_cfg.tap_module
    return d
