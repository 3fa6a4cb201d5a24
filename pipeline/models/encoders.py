"""Image and spectrogram encoders with a features/head split (timm's convention).

``ConvEncoder`` is a small residual CNN for any [C, H, W] input (an image, or a log-mel
spectrogram as a one-channel image); ``width`` and ``depth`` make the teacher much larger than
the student. ``TimmEncoder`` wraps any timm architecture by name (no pretrained downloads).
The table ``ARCHS`` is the only place that maps a config's ``arch`` to a class; ``arch_dict`` turns a
config's encoder settings and an input shape into the constructor arguments ``build_encoder`` takes (and
checkpoints store).
"""

from __future__ import annotations

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


class TimmEncoder(nn.Module):
    """Any timm model by name, split into pooled features and classifier."""

    def __init__(self, name: str, in_chans: int, num_classes: int) -> None:
        super().__init__()
        try:
            import timm
        except ImportError:
            raise RuntimeError(f"arch 'timm:{name}' needs timm: pip install 'fdkd[timm]'") from None
        try:
            self.model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes)
        except RuntimeError as e:  # timm raises RuntimeError("Unknown model ...")
            raise ValueError(f"timm has no architecture {name!r}: {e}") from None
        self.num_features = self.model.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.model.get_classifier()(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_encoder(arch: str, in_chans: int, num_classes: int, width: int = 16, depth: int = 2,
                  stem_stride: int = 1) -> nn.Module:
    """Construct an encoder from the constructor arguments a checkpoint stores."""
    if arch == "conv":
        return ConvEncoder(in_chans, num_classes, width=width, depth=depth, stem_stride=stem_stride)
    if arch.startswith("timm:"):
        return TimmEncoder(arch.removeprefix("timm:"), in_chans, num_classes)
    raise ValueError(f"unknown arch {arch!r}: expected 'conv' or 'timm:<name>'")


def arch_dict(model_cfg, input_shape: tuple[int, ...], num_classes: int) -> dict:
    """Constructor arguments of an encoder for inputs of ``input_shape`` ([C, H, W]); stored in checkpoints."""
    return {"arch": model_cfg.arch, "in_chans": input_shape[0], "num_classes": num_classes,
            "width": model_cfg.width, "depth": model_cfg.depth,
            "stem_stride": model_cfg.resolved_stem_stride(input_shape)}
