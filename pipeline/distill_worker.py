"""One torchrun worker of the distillation stage: ``torchrun --nproc-per-node N -m fdkd.pipeline.distill_worker``.

    torchrun --nproc-per-node 2 -m fdkd.pipeline.distill_worker --config runs/avdigits/config.yaml
    torchrun --nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --nproc-per-node 8 \\
        -m fdkd.pipeline.distill_worker --config my.yaml --set distill.method=fd

Every rank runs ``fdkd.pipeline.distill.run``; rank 0 writes ``student.pt``, its config and
``metrics.jsonl``. ``fdkd distill --set accel.nproc=N`` (or ``fdkd run``) launches this for you
and records the result in the run's manifest.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--result", type=Path, default=None, help="rank 0 writes the results here as JSON")
    args = ap.parse_args(argv)

    from fdkd.pipeline.numerics import prepare_openmp

    prepare_openmp()  # before torch loads (torchrun passes the CLI's environment on; a bare torchrun does not)
    from fdkd.pipeline import distill
    from fdkd.pipeline.config import load_config

    cfg = load_config(args.config, args.sets)
    _, results = distill.run(cfg)
    if args.result and int(os.environ.get("RANK", "0")) == 0:
        args.result.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
