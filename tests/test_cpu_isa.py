"""The INT8 kernel family, read from /proc/cpuinfo text (samples of the machines this project has met)."""

import pytest

from fdkd.serving.runtime.cpu_isa import kernel_family

XEON_VNNI = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum\nflags\t\t: fpu avx avx2 avx512f avx512_vnni\n"
EPYC_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma f16c\n"
ALDER_LAKE = "flags\t: avx avx2 avx_vnni\n"
SAPPHIRE_AMX = "flags\t: avx512f amx_int8 amx_tile\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp\n"
CORTEX_A57 = "Features\t: fp asimd evtstrm aes crc32\n"


@pytest.mark.parametrize(("cpuinfo", "machine", "family"), [
    (XEON_VNNI, "x86_64", "x86-vnni"),
    (EPYC_AVX2, "x86_64", "x86"),  # 16-bit pair sums: saturates
    (ALDER_LAKE, "x86_64", "x86-vnni"),
    (SAPPHIRE_AMX, "AMD64", "x86-vnni"),
    (GRAVITON, "aarch64", "arm-dotprod"),
    (CORTEX_A57, "aarch64", "arm"),  # Jetson Nano / TX2 class
    ("", "x86_64", "x86"),  # no flags known: assume the saturating family
    ("", "riscv64", "riscv64"),
])
def test_kernel_family(cpuinfo, machine, family):
    assert kernel_family(cpuinfo, machine) == family



def test_host_line_from_cpuinfo():
    """The benchmarks' host line: model name and the SIMD flags that matter, from the same text."""
    from fdkd.serving.runtime.cpu_isa import cpu_model, describe, simd_flags

    assert cpu_model(XEON_VNNI) == "Intel(R) Xeon(R) Platinum"
    assert simd_flags(XEON_VNNI) == ["avx", "avx2", "avx512_vnni", "avx512f"]
    assert simd_flags(EPYC_AVX2) == ["avx", "avx2", "f16c", "fma"]
    assert simd_flags(GRAVITON) == ["asimd", "asimddp"]
    assert describe(EPYC_AVX2) == "AMD EPYC; flags: avx avx2 f16c fma"
    assert describe("model name\t: X\n").endswith("; flags: -")
    assert cpu_model("") != ""  # platform's answer where /proc/cpuinfo says nothing


def test_host_line_here_matches_the_file():
    from fdkd.serving.runtime.cpu_isa import cpuinfo_text, describe

    assert describe() == describe(cpuinfo_text())
