"""Where training runs: device, mixed precision, memory format, torch.compile and torchrun processes.

``setup(cfg)`` reads the ``accel`` config section and the torchrun environment (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``): several processes join one process group (nccl on CUDA, gloo on CPU)
and the trainer wraps the trainable modules in DistributedDataParallel. On CUDA: AMP (bf16 where
the GPU supports it, else fp16 with a gradient scaler), pinned host memory with non-blocking
copies, and ``torch.compile`` when asked for. channels_last (NHWC) for image-shaped inputs on
CUDA and on x86 CPUs, where oneDNN's NHWC convolutions train the built-in conv encoders faster
(``python -m bench.train.memory_format``); ARM CPUs keep NCHW unless ``accel.channels_last=on``.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import torch

X86 = ("x86_64", "amd64", "i686", "i386")  # platform.machine() of x86 CPUs (Linux, Windows)


@dataclass
class Accel:
    device: torch.device
    rank: int = 0
    world: int = 1
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def batch(self, t: torch.Tensor) -> torch.Tensor:
        """A host batch on the device (non-blocking from pinned memory), in the chosen memory format."""
        t = t.to(self.device, non_blocking=True)
        if self.channels_last and t.ndim == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def host(self, t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory() if self.device.type == "cuda" else t

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def nhwc_hazard(model: torch.nn.Module) -> str | None:
    """The first layer NHWC training must not run on the CPU, or None.

    oneDNN's AVX2 kernel for the input gradient of a 1x1 stride-2 convolution with fewer than 8 input
    channels writes past its buffer in NHWC (torch 2.13 CPU wheel: heap corruption, then an abort; every
    other kernel size, stride and channel count checked gave NCHW's gradients). Such a model (the residual
    shortcut of a conv encoder narrower than 8) trains in NCHW instead.
    """
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 8:
            return f"{name} ({type(m).__name__} {m.in_channels}->{m.out_channels}, 1x1, stride {m.stride[0]})"
    return None


def setup(accel_cfg) -> Accel:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want = accel_cfg.device
    cuda = torch.cuda.is_available() and want in ("auto", "cuda")
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("accel.device is 'cuda' but no CUDA device is visible")
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    amp = None
    if cuda and accel_cfg.amp != "off":
        bf16 = torch.cuda.is_bf16_supported()
        amp = {"auto": torch.bfloat16 if bf16 else torch.float16, "bf16": torch.bfloat16,
               "fp16": torch.float16}[accel_cfg.amp]
    channels_last = accel_cfg.channels_last == "on"
    if accel_cfg.channels_last == "auto":  # on where measured faster: CUDA, and x86 CPUs (oneDNN's NHWC kernels)
        channels_last = cuda or platform.machine().lower() in X86
    return Accel(device, rank, world, amp, channels_last, accel_cfg.compile)


def teardown(acc: Accel) -> None:
    if acc.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
