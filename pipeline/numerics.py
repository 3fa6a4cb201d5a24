"""What fixes a training stage's numerics on the CPU, and what keeps a busy machine from stalling it.

Two runs of a training stage on one machine kind give bit-identical weights when they run at the same torch
thread count: OpenMP and oneDNN split each reduction by thread, so another count rounds differently (1 and 2
threads give different weights after the first step). ``threads`` (config) unset means the cores this process may
run on (``os.sched_getaffinity``), not a guess from the current load, so the count is the same on every run of the
same machine; a stage that trained at another count is named (``check``), never silently mixed.

OpenMP's wait policy: by default libgomp's idle threads spin before they sleep; on a machine whose cores are busy
with other processes a spinning or descheduled thread stalls every parallel region (a distill epoch of the main job
took 284 s instead of ~25 s). ``prepare_openmp`` sets ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep at once;
``KMP_BLOCKTIME=0`` is Intel OpenMP's spelling of the same) and ``MKL_DYNAMIC=FALSE`` (MKL's condition for
run-to-run reproducibility: it never picks fewer threads than asked) before torch loads its OpenMP runtime: the
runtime reads them once, at load. A value the user set is kept. The policy changes no result
(``python -m bench.train.busy`` checks the weights), only how a loaded machine shares its cores.

Memory: ``bound_heap`` fixes glibc's threshold above which an allocation is its own mapping (4 MB), so the large
buffers a stage allocates per chunk go back to the OS when freed instead of growing the heap with the number of
chunks (issue 29: validation at 50,000 pairs). Opening a streamed dataset calls it (``load_dataset``); a dataset in
memory leaves glibc's default, since every large buffer then costs fresh pages (the README's main job, in memory: 45
million minor page faults and 117 s of system time with it, 316 s in all; 260 s without). Numerics are not touched.

Nothing here imports torch at module level: ``prepare_openmp`` must run before torch is imported.
"""

from __future__ import annotations

import functools
import os
import sys

# set before torch loads its OpenMP runtime (read once, at library load); a user's own value wins
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0", "MKL_DYNAMIC": "FALSE"}


def prepare_openmp(environ: dict | None = None) -> dict[str, str]:
    """Set ``OPENMP_ENV``'s defaults in ``environ`` (``os.environ``); returns what was set. Too late once torch is
    imported in this process: then nothing is set (and ``current`` records the environment torch actually read)."""
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules and environ is os.environ:
        return {}
    done = {}
    for k, v in OPENMP_ENV.items():
        if k not in environ:
            environ[k] = v
            done[k] = v
    return done


def current(threads: int | None = None) -> dict:
    """This process's training numerics, as a run's manifest records them per training stage; ``threads``: the count
    the stage will set (its config's ``threads``), else torch's current one."""
    import torch

    return {"threads": threads or torch.get_num_threads(), "device": "cpu",
            **{k.lower(): os.environ.get(k, "default") for k in OPENMP_ENV},
            "cpu": _cpu(), "torch": torch.__version__}


def _cpu() -> str:
    try:
        from fdkd.serving.runtime.cpu_isa import cpu_model

        return cpu_model()
    except Exception:  # never fail a stage over a description
        import platform

        return platform.processor() or platform.machine()


def check(recorded: dict | None, now: dict) -> str | None:
    """A line naming what differs between a stage's recorded numerics and this process's (thread count, CPU,
    torch), or None: the stage's weights would not be the ones an uninterrupted run made."""
    if not recorded:
        return None
    diffs = [f"{k} {recorded.get(k)} -> {now.get(k)}" for k in ("threads", "cpu", "torch")
             if recorded.get(k) != now.get(k)]
    return ", ".join(diffs) or None


HEAP_MMAP_BYTES = 4 << 20  # an allocation this large or larger is its own mapping, returned to the OS when freed
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def bound_heap(environ: dict | None = None) -> bool:
    """Keep large buffers out of the heap for the rest of this process (and the workers it forks): glibc's
    ``mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_BYTES)``. glibc's default threshold is dynamic: each large buffer freed
    raises it (to 32 MB at most), after which buffers of that size come from the heap, where long-lived small
    allocations between them pin the freed space. Validation over 7,500 test rows of 224x224 images + 3 s clips
    (chunks of up to 16 MB) peaked at 959 MiB with the default and 631 bounded (measured; 300 rows: under 680); with
    a fixed threshold each chunk's buffers are mapped and unmapped, the same at any N. A threshold the user set
    (``MALLOC_MMAP_THRESHOLD_``, which glibc read at start) is kept. False where there is no glibc, or it was kept."""
    environ = os.environ if environ is None else environ
    libc = glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in environ:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_BYTES))


@functools.cache
def glibc():
    """glibc, where this process has it (``malloc_trim``, ``mallopt``); None elsewhere (macOS, musl). Looked up once."""
    import ctypes

    try:
        lib = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return lib if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt") else None
