"""The one check of "was this artifact validated in the mode it will run in?", for ``fdkd serve`` and
``fdkd export triton`` alike.

A ``validation.json`` entry records the execution mode it was judged in (``OnnxRuntime.mode()``:
runtime, execution provider, graph optimisation level, Q/DQ fused or emulated, threads, the ONNX
Runtime version and, for Q/DQ fused on the CPU, the INT8 kernel family; a TensorRT engine's mode is
its TensorRT version and GPU). ``Target`` says where the artifact will run: this server
(``Target()``: this machine's CPU family and ONNX Runtime) or an export target named by the user
(``fdkd export triton --onnx-device gpu --target-int8-kernels x86 --target-onnxruntime 1.20.1``).
``target_mode`` is the mode the artifact would run in there; ``validated_entry`` picks the entry
for this very file (same sha256) validated in exactly that mode with a passed gate, or says why
there is none, naming each field that differs with both values. Light imports (no torch, no pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass

CPU = "CPUExecutionProvider"
MODE_ORDER = ("runtime", "provider", "graph_optimization", "qdq", "int8_kernels", "threads", "ort_version",
              "tensorrt", "gpu", "compute_capability", "device")
# what the user passes to name a target field (for the messages)
FIELD_OPTIONS = {"provider": "--onnx-device", "int8_kernels": "--target-int8-kernels",
                 "ort_version": "--target-onnxruntime", "threads": "--threads"}


def installed_ort_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def this_int8_kernels() -> str:
    from fdkd.serving.runtime.cpu_isa import int8_kernels

    return int8_kernels()


@dataclass(frozen=True)
class Target:
    """Where an artifact will run. ``None`` fields mean: as here (this CPU's INT8 kernel family, the installed
    ONNX Runtime) or, for ``threads``, the validated count."""

    provider: str = CPU
    int8_kernels: str | None = None
    ort_version: str | None = None
    threads: int | None = None
    where: str = "this server"  # "this server" | "the export target": words for the messages
    named: tuple[str, ...] = ()  # fields the user gave explicitly (their option is named in messages)


def mode_text(mode: dict) -> str:
    """``runtime=onnxruntime, ..., threads=default``: one order whatever the JSON's key order."""
    keys = [k for k in MODE_ORDER if k in mode] + sorted(k for k in mode if k not in MODE_ORDER)
    parts = [f"{k}={'default' if k == 'threads' and mode[k] is None else mode[k]}" for k in keys
             if mode[k] is not None or k == "threads"]
    return ", ".join(parts) or "unknown"


def target_mode(entry_mode: dict, suffix: str, target: Target = Target()) -> dict:
    """The mode ``target`` would run an artifact in, given the mode an entry for that file was validated in."""
    if suffix == ".plan":
        return entry_mode  # checked against the loaded engine (TensorRT version and this GPU) after loading
    has_qdq = entry_mode.get("qdq") is not None  # the entry describes this very file (same sha256)
    mode = {"runtime": "onnxruntime", "provider": target.provider, "graph_optimization": "all",
            "qdq": "fused" if has_qdq else None,
            "threads": target.threads if target.threads is not None else entry_mode.get("threads"),
            "ort_version": target.ort_version or installed_ort_version()}
    if has_qdq and target.provider == CPU:  # fused INT8 kernels compute differently per CPU family
        mode["int8_kernels"] = target.int8_kernels or this_int8_kernels()
    return mode


def mismatches(validated: dict, want: dict) -> list[tuple[str, object, object]]:
    """(field, validated value, target value) for every field where the two modes differ, in MODE_ORDER."""
    keys = [k for k in MODE_ORDER if k in validated or k in want]
    keys += sorted(k for k in set(validated) | set(want) if k not in MODE_ORDER)
    return [(k, validated.get(k), want.get(k)) for k in keys if validated.get(k) != want.get(k)]


def mismatch_text(diff: list[tuple[str, object, object]], target: Target) -> str:
    """``int8_kernels: validated x86-vnni, the export target x86 (--target-int8-kernels)``; ``; ``-joined."""
    def one(k, v, t):
        opt = f" ({FIELD_OPTIONS[k]})" if k in target.named and k in FIELD_OPTIONS else ""
        v, t = (("default" if x is None else x) if k == "threads" else ("not recorded" if x is None else x)
                for x in (v, t))
        return f"{k}: validated {v}, {target.where} {t}{opt}"

    return "; ".join(one(*d) for d in diff)


def gate_verdict(g: dict) -> str:
    limit = "none" if g.get("limit") is None else (f"{g['limit']:g}" if isinstance(g["limit"], float | int)
                                                   else str(g["limit"]))
    value = f"{g['value']:.4g}" if isinstance(g.get("value"), float | int) else str(g.get("value"))
    return f"{g.get('metric')}={value}, limit {limit}"


def validated_entry(validation: dict, name: str, sha: str, suffix: str,
                    target: Target = Target()) -> tuple[dict, str]:
    """(the entry that validates running ``name`` on ``target``, or {}; the problem when there is none or its gate
    failed: then the entry is returned with the problem)."""
    named = [a for a in validation.get("artifacts", []) if a.get("name") == name]
    if not named:
        return {}, f"{name} was not validated (no entry in validation.json)"
    same = [a for a in named if a.get("sha256") == sha]
    if not same:
        judged = sorted({str(a.get("sha256", "none"))[:12] for a in named})
        return {}, (f"validation.json is stale for {name}: it judged sha256 {', '.join(judged)}, the file is "
                    f"{sha[:12]} (the artifact changed after validation, e.g. a standalone fdkd quantize or "
                    "export); re-run `fdkd validate`")
    ran = [a for a in same if "skipped" not in a]
    if not ran:
        return {}, f"{name} was not validated: it could not run where it was validated ({same[0]['skipped']})"
    for a in ran:
        if not mismatches(a.get("mode", {}), target_mode(a.get("mode", {}), suffix, target)):
            g = a.get("gate")
            if g is None:
                return a, f"{name} was not validated in mode [{mode_text(a['mode'])}] (no gate in validation.json)"
            if not g.get("passed"):
                return a, (f"{name} failed its validation gate in mode [{mode_text(a['mode'])}] "
                           f"({gate_verdict(g)})")
            return a, ""
    diffs = [(mismatches(a.get("mode", {}), target_mode(a.get("mode", {}), suffix, target)), a) for a in ran]
    closest, entry = min(diffs, key=lambda d: len(d[0]))
    want = target_mode(entry.get("mode", {}), suffix, target)
    fields = {k for k, _, _ in closest}
    hint = ""
    if fields == {"threads"} and target.threads is not None:
        hint = f" (validate with `--set validate.threads={target.threads}`, or serve without --threads)"
    elif fields == {"int8_kernels"}:
        where = ("on a CPU of another family" if "int8_kernels" in entry.get("mode", {})
                 else "before fdkd recorded the CPU's INT8 kernel family")
        here = target.where == "this server"
        hint = (f" (its fused INT8 kernels were judged {where}; {'this CPU' if here else 'the target'}'s is "
                f"{want.get('int8_kernels')}: run `fdkd validate` on {'this machine' if here else 'such a CPU'}, "
                f"or {'serve' if here else 'export'} student.onnx)")
    elif fields == {"ort_version"}:
        hint = (f" (ONNX Runtime {entry.get('mode', {}).get('ort_version') or 'of unrecorded version'} judged it; "
                f"{target.where} runs {want.get('ort_version')}: validate under that version)")
    return {}, (f"{name} was validated only in mode(s) " + "; ".join(f"[{mode_text(a.get('mode', {}))}]" for a in ran)
                + f", not in the mode {target.where} would run it in [{mode_text(want)}]{hint}: "
                + mismatch_text(closest, target))
