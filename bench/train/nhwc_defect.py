"""Which convolutions does NHWC (channels_last) training get wrong on this CPU? The sweep behind
``fdkd.pipeline.accel.nhwc_hazard``.

    python -m bench.train.nhwc_defect            # 1x1 and 3x3 kernels, strides 1 and 2, 1-24 input channels

Each case runs in a child process with glibc's heap checks on (``MALLOC_CHECK_=3``): a Conv2d with
``2 x in_channels`` outputs on a batch of 64, three forward/backward passes in NHWC beside the same
layer in NCHW. A case is ``ok`` when its input and weight gradients match NCHW's to 1e-3, ``wrong``
when they do not, and ``crash`` when the child dies (heap corruption). Prints one row per failing case,
a count of the rest, the CPU model and flags, and whether ``nhwc_hazard`` flags exactly the crashes.
"""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = """
import sys, torch

ROOT = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)
ic, oc, k, s, hw = map(int, sys.argv[1:6])
torch.manual_seed(0)
ref = torch.nn.Conv2d(ic, oc, k, s, padding=k // 2, bias=False)
nhwc = torch.nn.Conv2d(ic, oc, k, s, padding=k // 2, bias=False)
nhwc.load_state_dict(ref.state_dict())
nhwc = nhwc.to(memory_format=torch.channels_last)
x0 = torch.randn(64, ic, hw, hw)
x = x0.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
xr = x0.clone().requires_grad_()
g = torch.randn_like(ref(xr))
for _ in range(3):
    x.grad = xr.grad = None
    nhwc.zero_grad(); ref.zero_grad()
    nhwc(x).backward(g); ref(xr).backward(g)
err = max((x.grad - xr.grad).abs().max().item(), (nhwc.weight.grad - ref.weight.grad).abs().max().item())
print("ok" if err < 1e-3 else "wrong")
"""

CASES = [(ic, 2 * ic, k, s, hw) for k in (1, 3) for s in (1, 2) for ic in (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 24)
         for hw in (8, 20)]


def run_case(case) -> str:
    env = dict(os.environ, MALLOC_CHECK_="3", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", CHILD, *map(str, case)], capture_output=True, text=True, env=env,
                       timeout=120, check=False)
    return p.stdout.strip() if p.returncode == 0 else "crash"


def main() -> None:
    import torch

    from fdkd.pipeline.accel import nhwc_hazard
    from fdkd.serving.runtime.cpu_isa import describe

    print("| in | out | kernel | stride | input | NHWC result | nhwc_hazard flags it |\n|---|---|---|---|---|---|---|")
    results, missed, spared = {}, 0, 0
    for case in CASES:
        ic, oc, k, s, hw = case
        results[case] = run_case(case)
        flagged = nhwc_hazard(torch.nn.Conv2d(ic, oc, k, s)) is not None
        missed += results[case] != "ok" and not flagged
        spared += results[case] == "ok" and flagged
        if results[case] != "ok" or flagged:
            print(f"| {ic} | {oc} | {k}x{k} | {s} | {hw}x{hw} | {results[case]} | {'yes' if flagged else 'no'} |")
    n_ok = sum(r == "ok" for r in results.values())
    print(f"\n{n_ok} of {len(results)} cases ok (same gradients as NCHW, heap intact); failing cases nhwc_hazard "
          f"misses: {missed}; ok cases it keeps in NCHW anyway (same kernel family): {spared}")
    print(f"cpu: {describe()}; torch {torch.__version__}")
    print("reproduce: python -m bench.train.nhwc_defect")


if __name__ == "__main__":
    main()
