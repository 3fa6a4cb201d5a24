"""Where a run's audio student fails on unseen accents: accuracy per accent and per word, and the top confusions.

    python -m bench.accents.errors runs/avdigits                # a finished `fdkd run` on the built-in data

Reads the run's ``student.pt`` and its dataset (``student.config.yaml``), evaluates the in-domain
``test`` split and ``test_unseen_accent`` on the CPU, and prints one table per split. Prints the
CPU model and flags like every benchmark here, though nothing in it is timed.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from fdkd.serving.runtime.cpu_isa import cpu_model, simd_flags

ROOT = Path(__file__).resolve().parents[2]


def errors(run_dir: Path) -> list[str]:
    import numpy as np
    import torch

    from fdkd.pipeline import data
    from fdkd.pipeline.config import load_config
    from fdkd.pipeline.data.dataset import row_arrays
    from fdkd.pipeline.models.checkpoint import load_model
    from fdkd.pipeline.train import predict

    cfg = load_config(run_dir / "student.config.yaml", [])
    ds = data.load(cfg)
    if not ds.has_split("test_unseen_accent"):
        raise SystemExit(f"{run_dir}: its dataset holds out no accents (data.avdigits.unseen_accents is empty)")
    model, _ = load_model(run_dir / "student.pt")
    model.eval()
    accent = row_arrays(ds.path)["accent"]
    out = [f"run: {run_dir}", ""]
    for split in ("test", "test_unseen_accent"):
        idx = ds.indices(split)
        y = ds.y[idx]
        with torch.no_grad():
            p = predict(model, torch.from_numpy(ds.x["audio"][idx])).argmax(1).numpy()
        ok = p == y
        out += [f"### {split}: {100 * ok.mean():.1f} % of {len(idx)} clips", "",
                "| accent | clips | accuracy % |", "|---|---|---|"]
        a = accent[idx]
        out += [f"| {ds.meta['accents'][k]} | {(a == k).sum()} | {100 * ok[a == k].mean():.1f} |" for k in np.unique(a)]
        out += ["", "| word | clips | accuracy % | most often heard as |", "|---|---|---|---|"]
        for c, name in enumerate(ds.class_names):
            wrong = Counter(ds.class_names[q] for q in p[(y == c) & ~ok]).most_common(2)
            out.append(f"| {name} | {(y == c).sum()} | {100 * ok[y == c].mean():.0f} | "
                       f"{', '.join(f'{w} ({n})' for w, n in wrong) or '-'} |")
        out.append("")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    args = ap.parse_args(argv)
    print(f"CPU: {cpu_model()} ({' '.join(simd_flags())})")
    print("\n".join(errors(args.run_dir)))
    print(f"reproduce: python -m bench.accents.errors {args.run_dir}")


if __name__ == "__main__":
    main()
