"""One torchrun worker of the teacher stage: ``torchrun --nproc-per-node N -m fdkd.pipeline.teacher_worker``.

    torchrun --nproc-per-node 2 -m fdkd.pipeline.teacher_worker --config runs/avdigits/config.yaml --modality image

Every rank runs ``fdkd.pipeline.teacher.run``; rank 0 writes ``teacher.<modality>.pt``, its config and metrics.
``fdkd teacher --set accel.nproc=N`` (or ``fdkd run``) launches this for you and records the result in the run's
manifest.
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
    ap.add_argument("--modality", default=None, help="the teacher's modality (default: teacher.modality)")
    ap.add_argument("--result", type=Path, default=None, help="rank 0 writes {path, metrics} here as JSON")
    args = ap.parse_args(argv)

    from fdkd.pipeline.numerics import prepare_openmp

    prepare_openmp()  # before torch loads (torchrun passes the CLI's environment on; a bare torchrun does not)
    from fdkd.pipeline import teacher
    from fdkd.pipeline.config import load_config

    cfg = load_config(args.config, args.sets)
    path, metrics = teacher.run(cfg, args.modality)
    if args.result and int(os.environ.get("RANK", "0")) == 0:
        args.result.write_text(json.dumps({"path": str(path), "metrics": metrics}))


if __name__ == "__main__":
    main()
