"""What the science benches v2 (``bench.science.v2``) and v3 (``bench.science.v3``) share.

The data presets and their knobs, run naming, the plateau rule, the pins every science record was made with,
the machine a run is recorded on, the records file (read, look up by key to resume and skip, append one line
per run as it lands), the worker set-up, the host line both print first, and the arguments both take. Each
bench keeps its own schedule, rows and record fields; the generators read the records through ``load``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# preset -> (overrides, the config section its knobs live in, directions, training pairs for the plan)
PRESETS = {
    "avdigits": (["data.source=avdigits", "data.avdigits.preset=avdigits", "data.avdigits.clips_per_image=1"],
                 "data.avdigits", ("image->audio",), 1258),
    "avblend": (["data.source=avblend"], "data.avblend", ("image->audio", "audio->image"), 1400),
    "avmnist": (["data.source=avdigits", "data.avdigits.preset=avmnist", "data.avdigits.clips_per_image=1"],
                "data.avdigits", ("image->audio",), 3500),
}
BENCH_SETS = {"avblend": ["data.avblend.pairs=2000"]}  # sized for the 4-hour budget (the preset's default: 3000)
# the audio augmentation every science record was made with (the defaults before issue 8 part 5 widened them)
AUGMENT_V1 = ["distill.augment.speed=[0.9,1.1]", "distill.augment.pitch_semitones=[-2,2]",
              "distill.augment.pitch_p=0.5", "distill.augment.freq_warp_bins=1.5"]
# the CPU records trained in NCHW (the CPU default before accel.channels_last's auto turned NHWC on for x86); the
# CUDA records in NHWC, which auto still picks there
MEMORY_FORMAT_V1_CPU = ["accel.channels_last=off"]
PLATEAU_PT = 1.0
# overrides that name where a run lives on this disk, not what it trained: left out of the records
LOCAL_SETS = ("runs_dir=", "data.cache_dir=", "teacher.checkpoint=", "name=")


def parse_preset(spec: str) -> tuple[str, list[str]]:
    """``avblend:shared=0.5`` -> ("avblend", overrides)."""
    name, _, knobs = spec.partition(":")
    if name not in PRESETS:
        raise SystemExit(f"unknown preset {name!r}; presets are {sorted(PRESETS)}")
    base, section, _, _ = PRESETS[name]
    sets = [*base, *BENCH_SETS.get(name, [])]
    for kv in filter(None, knobs.split(",")):
        if "=" not in kv:
            raise SystemExit(f"preset knob {kv!r} in {spec!r} is not key=value")
        sets.append(f"{section}.{kv}")
    return name, sets


def tag(*parts) -> str:
    s = "-".join(str(p) for p in parts)
    for a, b in (("->", "-to-"), (" ", "_"), (":", "_"), ("=", ""), ("(", ""), (")", ""), ("+", "p"), (",", "_")):
        s = s.replace(a, b)
    return s


def is_flat(curve: list[float]) -> bool:
    """The plateau rule: the last third of the epochs raised the best validation accuracy by < PLATEAU_PT."""
    n = len(curve)
    if n < 3:
        return False
    return 100 * (max(curve[2 * n // 3 :]) - max(curve[: 2 * n // 3])) < PLATEAU_PT


def base_sets(preset: str, args, device: str, *extra: str) -> list[str]:
    """A run's overrides before its row: the preset, where it lives, the teacher's epochs, the student width, the
    v1 pins (augmentation; NCHW on the CPU), ``extra`` in between and the ``--set`` overrides last. Every label is
    kept (``data.labelled=1``: the built-in run now keeps 5 %) unless a later override says otherwise (v3's cells)."""
    _, sets = parse_preset(preset)
    return [*sets, f"runs_dir={args.out}", f"data.cache_dir={args.data_cache}", "data.labelled=1.0", *extra,
            f"teacher.optim.epochs={args.teacher_epochs}", f"distill.student.width={args.width}",
            "distill.grad_norm_every=0", *AUGMENT_V1, *(MEMORY_FORMAT_V1_CPU if device == "cpu" else []), *args.sets]


def machine() -> dict:
    """CPU model and the SIMD flags that matter here, the device, library versions."""
    import torch

    from fdkd.serving.runtime.cpu_isa import cpu_model, simd_flags

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "flags": simd_flags(), "device": device,
            "torch": torch.__version__}


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def host_line(info: dict) -> str:
    """The first line both benches print: where the records will say they ran."""
    return (f"CPU: {info['cpu']} ({info['cores']} cores; flags {' '.join(info['flags'])}); device {info['device']}; "
            f"torch {info['torch']}; rev {info['rev']}")


def init_worker(threads: int) -> None:
    """A pool worker: ``threads`` torch threads, the quiet log."""
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("FDKD_QUIET", "1")


def load(path: Path) -> list[dict]:
    """The records of a jsonl file, in order; none where the file is not there yet."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def load_for_tables(path: Path, bench: str) -> list[dict]:
    """A generator's records: refused (SystemExit) where ``bench`` has not written any at ``path``."""
    if not Path(path).exists():
        raise SystemExit(f"no records at {path}: run python -m {bench} first")
    return load(path)


class RecordFile:
    """The committed records of one bench: read once, looked up by key (what to skip on a rerun), appended to as
    each run lands (one JSON line, flushed then, so a killed bench loses at most the runs in flight)."""

    def __init__(self, path) -> None:
        self.path = Path(path)
        self.records: list[dict] = load(self.path)

    def find(self, **key) -> dict | None:
        """The first record whose fields equal ``key`` (a field the record lacks never matches)."""
        return next((r for r in self.records if all(k in r and r[k] == v for k, v in key.items())), None)

    def land(self, head: dict, rec: dict, sets: list[str], info: dict) -> dict:
        """``head`` (the record's key fields) + ``rec`` (what the run measured) + the run's overrides without the
        local ones + the machine + the time; kept and appended to the file. Returns the full record."""
        full = {**head, **rec}
        full.update({"sets": [s for s in sets if not s.startswith(LOCAL_SETS)], "machine": info,
                     "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.records.append(full)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:  # one line per run, as it lands
            f.write(json.dumps(full) + "\n")
        return full


def add_run_args(ap: argparse.ArgumentParser, records: str, out: str) -> None:
    """The arguments both benches take: the schedule's size, the student, the pool, where records and runs go."""
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument("--width", type=int, default=8, help="student width (the shipped default is 16)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra override for every run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (each single-threaded)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--records", default=records)
    ap.add_argument("--out", default=out)
    ap.add_argument("--data-cache", default="runs/data")


def smoke_paths(ap: argparse.ArgumentParser, args: argparse.Namespace, out: str) -> None:
    """``--smoke``: 300 avdigits images, and runs (and records, unless ``--records`` was given) under ``out``."""
    args.sets = ["data.avdigits.max_images=300", *args.sets]
    if args.records == ap.get_default("records"):
        args.records = f"{out}/records.jsonl"
    args.out = out
