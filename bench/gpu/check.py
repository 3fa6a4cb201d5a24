"""The GPU check's Python half (run it through ``bench/gpu/check.sh``): environment, ctypes CUDA, distillation.

Each step is recorded even when it fails (with the error), so one run on a GPU machine answers
as much as it can. Records: ``<out>/gpu_check.json``; ``--render FILE`` prints the tables from
such a file (docs/results/gpu-check.md is made from committed records this way, never typed by hand).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

BEGIN, END = "<!-- gpu_check:begin (bench/gpu/check.py --render) -->", "<!-- gpu_check:end -->"


def environment() -> dict:
    from fdkd.serving.runtime.cpu_isa import cpu_model, simd_flags

    env = {"python": sys.version.split()[0], "cpu": {"model": cpu_model(), "flags": simd_flags()},
           "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                            "--format=csv,noheader"], capture_output=True, text=True,
                                           timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        env["nvidia_smi"] = f"not available ({e})"
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = torch.cuda.is_available()
        if env["cuda_available"]:
            env["gpu"] = torch.cuda.get_device_name()
    except ImportError as e:
        env["torch"] = f"missing ({e})"
    try:
        import tensorrt

        env["tensorrt"] = tensorrt.__version__
    except Exception as e:  # absent, or present and broken: both worth recording
        env["tensorrt"] = f"unavailable ({type(e).__name__}: {e})"
    return env


def cuda_runtime_check() -> dict:
    """fdkd's ctypes libcudart backend on this machine: device query and a 64 MiB round trip."""
    import numpy as np

    from fdkd.serving.runtime.cuda_env import gpu_slug, gpu_status

    info, why = gpu_status()
    if info is None:
        return {"ok": False, "error": why}
    from fdkd.serving.runtime.cudart import runtime

    rt = runtime()
    x = np.random.default_rng(0).standard_normal(16 << 20).astype(np.float32)
    y = np.empty_like(x)
    ptr, stream = rt.malloc(x.nbytes), rt.stream_create()
    t0 = time.perf_counter()
    rt.memcpy_htod(ptr, x.ctypes.data, x.nbytes, stream)
    rt.memcpy_dtoh(y.ctypes.data, ptr, y.nbytes, stream)
    rt.stream_synchronize(stream)
    seconds = time.perf_counter() - t0
    rt.free(ptr)
    rt.stream_destroy(stream)
    return {"ok": bool(np.array_equal(x, y)), "gpu": info, "slug": gpu_slug(info),
            "round_trip_gib_s": round(2 * x.nbytes / seconds / 2**30, 2)}


def distill_rows(epochs: int, sets: list[str], runs: Path) -> list[dict]:
    import torch

    from fdkd.pipeline import data, distill, teacher
    from fdkd.pipeline.config import load_config

    devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    base = [f"runs_dir={runs}", f"data.cache_dir={runs}/data", "data.labelled=1.0", f"distill.optim.epochs={epochs}",
            "distill.grad_norm_every=0", *sets]
    rows = []
    for device in devices:
        tcfg = load_config(None, [*base, f"name=teacher-{device}", f"accel.device={device}"])
        tpath = tcfg.run_dir / "teacher.image.pt"
        if not tpath.exists():
            teacher.run(tcfg)
        for method in ("none", "fd"):
            cfg = load_config(None, [*base, f"name={method}-{device}", f"accel.device={device}",
                                     f"distill.method={method}", f"teacher.checkpoint={tpath}"])
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            _, res = distill.run(cfg)
            wall = time.perf_counter() - t0
            recs = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
            n_train = len(data.load(cfg).indices("train"))
            epoch_s = sorted(r["epoch_seconds"] for r in recs)[len(recs) // 2]
            rows.append({"device": device, "card": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                         "method": method, "train_samples_per_s": n_train / epoch_s,
                         "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
                         "test_acc": res["student"]["test_acc"], "wall_s": wall,
                         "band_split": res["student"].get("band_split", "-")})
    return rows


def render(rec: dict) -> str:
    env = rec["environment"]
    lines = [f"GPU check {env.get('time')}: python {env.get('python')}, torch {env.get('torch')} "
             f"(CUDA {env.get('torch_cuda')}), TensorRT {env.get('tensorrt')}",
             f"nvidia-smi: {env.get('nvidia_smi')}",
             f"CPU: {env['cpu']['model']} (flags: {' '.join(env['cpu']['flags']) or '-'})", ""]
    cuda = rec["steps"].get("cuda_runtime", {})
    if cuda.get("ok"):
        lines.append(f"ctypes libcudart: OK on {cuda['slug']} ({cuda['gpu'].get('cudart')}), "
                     f"64 MiB round trip {cuda['round_trip_gib_s']} GiB/s")
    else:
        lines.append(f"ctypes libcudart: FAILED: {cuda.get('error')}")
    rows = rec["steps"].get("distill", {}).get("rows")
    if rows:
        lines += ["", "| device | card | method | train samples/s | peak GPU MiB | test acc % | wall s | band split |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            peak = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}"
            lines.append(f"| {r['device']} | {r['card']} | {r['method']} | {r['train_samples_per_s']:.0f} | {peak} "
                         f"| {100 * r['test_acc']:.1f} | {r['wall_s']:.0f} | {r['band_split']} |")
    else:
        lines.append(f"distillation: FAILED: {rec['steps'].get('distill', {}).get('error')}")
    lines.append(f"\nreproduce: {rec['command']}  (epochs={rec['epochs']})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="where gpu_check.json goes")
    ap.add_argument("--runs", type=Path, default=Path("runs/gpu-check"), help="run directories and data cache")
    ap.add_argument("--render", type=Path, help="print the tables of an existing gpu_check.json and exit")
    ap.add_argument("--results", type=Path, help="with --render: write them between the gpu_check markers of this "
                                                 "file (docs/results/gpu-check.md) instead")
    args = ap.parse_args()
    if args.render:
        text = render(json.loads(args.render.read_text()))
        if args.results is None:
            print(text)
            return
        from bench.common import write_section

        write_section(args.results, BEGIN, END, f"\n\nGenerated by `python3 -m bench.gpu.check --render {args.render} "
                      f"--results {args.results}` from the committed raw record.\n\n```\n{text}\n```\n")
        print(f"wrote the GPU check section of {args.results}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    dry = " --dry-run" if args.epochs == 2 and args.sets else ""
    rec = {"command": f"bash bench/gpu/check.sh{dry}", "epochs": args.epochs, "sets": args.sets,
           "environment": environment(), "steps": {}}
    for name, step in (("cuda_runtime", cuda_runtime_check),
                       ("distill", lambda: {"rows": distill_rows(args.epochs, args.sets, args.runs)})):
        try:
            rec["steps"][name] = step()
        except Exception as e:  # record and go on: one run should answer as much as it can
            rec["steps"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(f"step {name} failed:\n{traceback.format_exc()}", file=sys.stderr)
        (args.out / "gpu_check.json").write_text(json.dumps(rec, indent=2, default=str) + "\n")
    print(render(rec))
    cuda_failed = rec["steps"]["cuda_runtime"].get("ok") is False
    gpu_expected = bool(rec["environment"].get("cuda_available"))  # torch sees a GPU: ours must too
    if "error" in rec["steps"]["distill"] or (cuda_failed and gpu_expected):
        sys.exit(1)


if __name__ == "__main__":
    main()
