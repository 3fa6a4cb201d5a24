"""What GPU, driver, CUDA and TensorRT this process sees (ctypes on libcudart + tensorrt; no torch).

Used to key engine files and their ``build.json`` sidecars, and by the runtime to refuse an
engine built for another GPU or TensorRT version. ``gpu_status`` answers (info, None) or (None,
the reason); ``gpu_info`` only the info, for callers that just skip.

Jetson modules (Orin Nano, Orin NX, AGX Orin) all report the GPU name "Orin" and sm 8.7, yet an
engine tuned on one is not tuned for another: ``jetson_module`` reads the board from the device
tree (``/proc/device-tree/model`` and the module part number in ``compatible``) and the L4T
release from ``/etc/nv_tegra_release``, and ``gpu_slug`` puts the module into the engine key.

``python -m fdkd.serving.runtime.cuda_env`` is the container entrypoint's probe: it prints the engine
key and exits 0 on a usable GPU with TensorRT; exits 10 without TensorRT (a CPU host: serve
ONNX); and when TensorRT imports but CUDA does not, logs why and exits 1, unless
``FDKD_ALLOW_CPU_FALLBACK=1`` asked for the CPU explicitly (then exit 11, still logged).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

NO_TENSORRT, CPU_FALLBACK = 10, 11  # probe exit codes besides 0 (GPU ready) and 1 (GPU failure)
FALLBACK_ENV = "FDKD_ALLOW_CPU_FALLBACK"


def tensorrt_version() -> str | None:
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return trt.__version__


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return None


DEVICE_TREES = ("proc/device-tree", "sys/firmware/devicetree/base", "run/host/device-tree")
MODULE_PARTS = ("p3767", "p3701", "p3668", "p3448", "p2888", "p3509")  # Orin Nano/NX, AGX Orin, Xavier NX, ...


def jetson_module(root: Path = Path("/"), environ: dict | None = None) -> dict | None:
    """{'model', 'part', 'l4t'} of a Jetson board (files under ``root``), or None elsewhere.

    ``model``: the device tree's ``model`` ("NVIDIA Jetson Orin Nano Developer Kit"); ``part``: the
    module's p37xx-xxxx number from ``compatible`` (p3767-0005 Orin Nano 8 GB, p3767-0000 Orin NX
    16 GB, p3701-0005 AGX Orin 64 GB, ...); ``l4t``: "36.4.0" from ``/etc/nv_tegra_release``.
    Docker masks ``/sys/firmware`` inside containers, so ``$FDKD_DEVICE_TREE`` or a read-only
    mount of the host's tree at ``/run/host/device-tree`` is read where present.
    """
    env = os.environ if environ is None else environ
    trees = ([Path(env["FDKD_DEVICE_TREE"])] if env.get("FDKD_DEVICE_TREE") else []) + [root / t for t in DEVICE_TREES]
    model = compat = None
    for tree in trees:
        model = model or _read_text(tree / "model")
        compat = compat or _read_text(tree / "compatible")
    release = _read_text(root / "etc/nv_tegra_release")
    if not (model and "jetson" in model.lower()) and release is None:
        return None
    info: dict = {}
    if model:
        info["model"] = model.replace("\x00", " ").strip()
    if compat:  # NUL-separated, board first: "nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234"
        parts = re.findall(r"p\d{4}-\d{4}", compat)
        modules = [p for p in parts if p.split("-")[0] in MODULE_PARTS]
        if modules or parts:
            info["part"] = (modules or parts)[-1]
    if release:  # "# R36 (release), REVISION: 4.0, GCID: ..."
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
        if m:
            info["l4t"] = f"{m.group(1)}.{m.group(2)}"
    return info or None


def gpu_status(device: int = 0, jetson_root: Path = Path("/")) -> tuple[dict | None, str | None]:
    """(name, compute capability, SMs, driver and runtime versions, Jetson module; None) or (None, why not)."""
    from fdkd.serving.runtime.cudart import (
        ATTR_CC_MAJOR,
        ATTR_CC_MINOR,
        ATTR_INTEGRATED,
        ATTR_SM_COUNT,
        CudaError,
        runtime,
    )

    try:
        rt = runtime()
        count = rt.device_count()
        if count < 1:
            return None, "CUDA reports no device"
        info = {"name": rt.device_name(device),
                "compute_capability": f"{rt.attribute(ATTR_CC_MAJOR, device)}.{rt.attribute(ATTR_CC_MINOR, device)}",
                "multiprocessors": rt.attribute(ATTR_SM_COUNT, device),
                "integrated": bool(rt.attribute(ATTR_INTEGRATED, device)),
                "driver": rt.driver_version(), "cuda_runtime": rt.runtime_version(), "cudart": rt.path}
    except Exception as e:  # CudaError with the call, error name and library; anything else named by type
        return None, str(e) if isinstance(e, CudaError) else f"{type(e).__name__}: {e}"
    module = jetson_module(jetson_root)
    if module:
        info["jetson"] = module
    return info, None


def gpu_info(device: int = 0) -> dict | None:
    """``gpu_status``'s info, or None without a usable GPU."""
    return gpu_status(device)[0]


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w and w != "nvidia"]


def gpu_slug(info: dict) -> str:
    """File-name form of a GPU: 'NVIDIA H100 80GB HBM3' + 9.0 -> 'h100-80gb-hbm3-sm90'.

    Every Orin module's GPU is called "Orin" (sm 8.7), so on a Jetson the board replaces the name
    ('jetson-orin-nano-developer-kit-p3767-0005-sm87'); an integrated GPU whose board cannot be
    read (a container without the device tree) keeps its SM count at least ('orin-8sms-sm87'; some
    Orin power modes switch SMs off, which then keys a new engine).
    """
    jetson = info.get("jetson") or {}
    if jetson.get("model") or jetson.get("part"):
        words = _words(jetson.get("model", "jetson")) + ([jetson["part"]] if jetson.get("part") else [])
    else:
        words = _words(info["name"])
        if info.get("integrated") and info.get("multiprocessors"):
            words.append(f"{info['multiprocessors']}sms")
    return "-".join(words + ["sm" + info["compute_capability"].replace(".", "")])


def same_device(built_for: dict, here: dict) -> bool:
    """An engine runs only where its key matches: the same GPU (Jetson module) and compute capability."""
    try:
        return gpu_slug(built_for) == gpu_slug(here) and built_for.get("name") == here.get("name")
    except KeyError:  # a sidecar without the GPU's name or compute capability
        return False


def describe(info: dict) -> str:
    j = info.get("jetson") or {}
    board = f" on {j.get('model', 'a Jetson')} ({j.get('part', '?')})" if j else ""
    return f"{info.get('name')} (sm {info.get('compute_capability')}){board}"


def engine_key(info: dict, version: str) -> str:
    """The engine folder's name: one per GPU (Jetson module) and TensorRT version."""
    return f"{gpu_slug(info)}-trt{version}"


def probe(environ: dict | None = None) -> tuple[int, str]:
    """(exit code, stdout line or log message): see the module docstring."""
    env = os.environ if environ is None else environ
    why = None
    try:
        import tensorrt as trt
    except ModuleNotFoundError as e:
        if e.name != "tensorrt":  # the bindings are there, a piece of them is not
            why = f"TensorRT is installed but does not import: {e}"
        else:
            return NO_TENSORRT, "no TensorRT in this image: serving ONNX with ONNX Runtime on the CPU"
    except Exception as e:  # a missing libnvinfer, a wrong CUDA: a GPU failure, never a silent CPU
        why = f"TensorRT is installed but does not import: {type(e).__name__}: {e}"
    if why is None:
        version = trt.__version__
        info, reason = gpu_status()
        if info is not None:
            return 0, engine_key(info, version)
        why = f"TensorRT {version} imports but CUDA does not: {reason}"
    if env.get(FALLBACK_ENV, "").strip().lower() in ("1", "true", "yes"):
        return CPU_FALLBACK, f"{why}\n{FALLBACK_ENV} is set: serving ONNX on the CPU instead (slow; not the engine)"
    return 1, f"{why}\nrefusing to fall back to the CPU silently; set {FALLBACK_ENV}=1 to allow it"


def main() -> int:
    code, text = probe()
    if code == 0:
        print(text)
    else:
        print(f"fdkd: {text}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
