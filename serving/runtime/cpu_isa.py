"""Which INT8 kernels ONNX Runtime's CPU provider picks on this machine.

With Q/DQ fused, ONNX Runtime (MLAS) computes INT8 convolutions and matmuls with kernels chosen by
the CPU's instruction set, and they do not all compute the same numbers: on x86 without VNNI the
U8S8 kernels sum pairs of products in 16 bits (``VPMADDUBSW``) and saturate for full-range weights,
which is why a TensorRT-target INT8 graph that matched its emulated (unfused) semantics on the
machines CI ran on before lost 38 points of accuracy fused on a 2-core AVX2 AMD EPYC (2026-12-03,
``tests/test_user_data.py``'s 600-pair run). So the kernel family is part of a fused INT8 graph's
execution mode: validation records it, and the server refuses a fused INT8 graph validated on
another family.

Families: ``x86-vnni`` (AVX-512 VNNI, AVX-VNNI or AMX-INT8: 32-bit accumulation, no saturation),
``x86`` (AVX2 / AVX-512 without VNNI: 16-bit pair sums), ``arm-dotprod`` (SDOT/UDOT), ``arm``,
else the machine name. Linux ``/proc/cpuinfo`` flags; elsewhere only the machine name is known.

The same reader gives the benchmarks their host line (``cpu_model``, ``simd_flags``, ``describe``): every
benchmark prints and records the CPU it ran on, and this is the one place that reads /proc/cpuinfo.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

X86_VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")
ARM_SIMD = ("asimd", "asimdhp", "asimddp", "sve", "sve2", "i8mm", "bf16")


def cpuinfo_text() -> str:
    """The text of /proc/cpuinfo; empty where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _fields(cpuinfo: str) -> list[tuple[str, str]]:
    return [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in cpuinfo.splitlines())]


def _flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def kernel_family(cpuinfo: str, machine: str) -> str:
    """The INT8 kernel family for a CPU described by ``cpuinfo`` (the text of /proc/cpuinfo) and ``machine``."""
    machine = machine.lower()
    flags = _flags(cpuinfo)
    if machine in ("x86_64", "amd64", "i686", "i386"):
        return "x86-vnni" if flags & set(X86_VNNI) else "x86"
    if machine in ("aarch64", "arm64"):
        return "arm-dotprod" if "asimddp" in flags else "arm"
    return machine or "unknown"


@functools.cache
def int8_kernels() -> str:
    """This machine's INT8 kernel family (see the module docstring)."""
    return kernel_family(cpuinfo_text(), platform.machine())


def cpu_model(cpuinfo: str | None = None) -> str:
    """The first ``model name`` of /proc/cpuinfo (or of ``cpuinfo``), else what ``platform`` knows."""
    fields = _fields(cpuinfo_text() if cpuinfo is None else cpuinfo)
    return next((v for k, v in fields if k == "model name" and v), None) or platform.processor() \
        or platform.machine() or "unknown"


def simd_flags(cpuinfo: str | None = None) -> list[str]:
    """Sorted: AVX/AVX2/AVX-512*, FMA, F16C, AMX*, *VNNI* on x86; NEON (asimd*), SVE, I8MM, BF16 on ARM."""
    fields = _fields(cpuinfo_text() if cpuinfo is None else cpuinfo)
    flags = next((v.split() for k, v in fields if k in ("flags", "Features")), [])
    return sorted(f for f in flags if f in ("avx", "avx2", "fma", "f16c") or f.startswith(("avx512", "amx"))
                  or "vnni" in f or f in ARM_SIMD)


def describe(cpuinfo: str | None = None) -> str:
    """One line: ``<model>; flags: <flags>``."""
    return f"{cpu_model(cpuinfo)}; flags: {' '.join(simd_flags(cpuinfo)) or '-'}"


if __name__ == "__main__":
    print(describe())
