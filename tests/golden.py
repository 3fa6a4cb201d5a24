"""Golden loss values on fixed seeded inputs.

The test compares against ``tests/golden/losses.json``. Regenerate it **only** on purpose, after
a deliberate change to a loss, with:  python tests/golden.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

PATH = Path(__file__).parent / "golden" / "losses.json"


def inputs() -> tuple[torch.Tensor, ...]:
    """The fixed seeded inputs: features f_s, f_t [8, 32], logits z_s, z_t [8, 10] (float64), labels y [8]."""
    g = torch.Generator().manual_seed(1234)
    f_s, f_t = (torch.randn(8, 32, generator=g, dtype=torch.float64) for _ in range(2))
    z_s, z_t = (torch.randn(8, 10, generator=g, dtype=torch.float64) for _ in range(2))
    y = torch.randint(0, 10, (8,), generator=g)
    return f_s, f_t, z_s, z_t, y


def compute() -> dict[str, float]:
    from fdkd.pipeline.config import DistillConfig
    from fdkd.pipeline.losses.dist import dist_loss
    from fdkd.pipeline.losses.dkd import dkd_loss
    from fdkd.pipeline.losses.fd import fd_feature_losses
    from fdkd.pipeline.losses.kd import kd_loss
    from fdkd.pipeline.objectives import METHODS

    f_s, f_t, z_s, z_t, y = inputs()
    fd = fd_feature_losses(f_s, f_t)
    out = {
        "kd_T4": kd_loss(z_s, z_t, 4.0), "dkd_a1_b8_T4": dkd_loss(z_s, z_t, y, 1.0, 8.0, 4.0),
        "dist_T1": dist_loss(z_s, z_t, 1.0, 1.0, 1.0), "fd_low": fd["low"], "fd_high": fd["high"],
    }
    torch.manual_seed(0)  # the objectives' own parameters (classifiers) are seeded
    for name in ("none", "kd", "feat", "dkd", "dist", "fd"):
        obj = METHODS[name](32, 32, 10, DistillConfig()).double()
        for term, (w, v) in obj(f_s, z_s, f_t, z_t, y, epoch=10).items():
            out[f"objective_{name}_{term}"] = w * v
    return {k: float(v.detach()) for k, v in out.items()}


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit("refusing to overwrite golden values without --write")
    PATH.parent.mkdir(exist_ok=True)
    PATH.write_text(json.dumps(compute(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {PATH}")
