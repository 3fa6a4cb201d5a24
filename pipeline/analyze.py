"""``fdkd analyze``: is the low band of the feature spectrum really shared across modalities?

For paired test samples, teacher features (modality A) and student features (modality B) are
each split into bands along the feature axis over a sweep of cuts, and compared per band with
linear CKA (any widths) and per-sample cosine (equal widths: the student's training projector is
applied when the checkpoint carries one). Two honesty checks from METHOD.md's "Traps":

- DC removed: the bands exclude bin 0; the ``low+dc`` rows add it back to show how much a shared
  offset alone inflates "low-frequency similarity" (the paper's analysis kept it).
- Control: the same numbers after a fixed random permutation of the student's channels, which
  destroys any meaning of "frequency" along the feature axis. A band effect that survives the
  permutation is not about frequency.

Writes ``analysis.json`` and ``analysis.png`` in the run directory. The test rows are read in eval batches
(``fdkd.pipeline.train.predict``): a streamed dataset is decoded batch by batch, and only the pooled features (a few
hundred numbers per row) are held.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fdkd import artifacts

CUT_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 3 / 8)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between [N, Dx] and [N, Dy] (Kornblith et al. 2019); 0 for a constant input."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    num = np.linalg.norm(y.T @ x) ** 2
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(num / den) if den > 0 else 0.0


def mean_cosine(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.shape != y.shape:
        return None
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    ok = (nx > 1e-12) & (ny > 1e-12)
    return float(np.mean(np.sum(x[ok] * y[ok], 1) / (nx[ok] * ny[ok]))) if ok.any() else 0.0


def bands(f: np.ndarray, cut: int) -> dict[str, np.ndarray]:
    import torch

    from fdkd.pipeline.losses.fd import band_split

    low, high = (b.numpy() for b in band_split(torch.from_numpy(f.astype(np.float64)), cut))
    return {"low": low, "high": high, "low+dc": low + f.mean(1, keepdims=True)}


def similarity(f_t: np.ndarray, f_s: np.ndarray, seed: int = 0) -> list[dict]:
    """Rows of {cut, band, control, cka, cosine} over the cut sweep (cut expressed on the teacher's width)."""
    perm = np.random.default_rng(seed).permutation(f_s.shape[1])
    rows = []
    for frac in CUT_FRACTIONS:
        cut_t = max(1, int(f_t.shape[1] * frac))
        cut_s = max(1, int(f_s.shape[1] * frac))
        bt = bands(f_t, cut_t)
        for control, fs in (("none", f_s), ("permuted", f_s[:, perm])):
            bs = bands(fs, cut_s)
            for band in bt:
                rows.append({"cut_fraction": frac, "cut": cut_t, "band": band, "control": control,
                             "cka": linear_cka(bt[band], bs[band]), "cosine": mean_cosine(bt[band], bs[band])})
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["cka"] + (["cosine"] if rows[0]["cosine"] is not None else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for band, color in (("low", "tab:blue"), ("high", "tab:red"), ("low+dc", "tab:gray")):
            for control, style in (("none", "-"), ("permuted", "--")):
                pts = [(r["cut_fraction"], r[metric]) for r in rows if r["band"] == band and r["control"] == control]
                ax.plot(*zip(*pts, strict=True), style, color=color, marker="o",
                        label=f"{band}{' (channel-permuted control)' if control == 'permuted' else ''}")
        ax.set_xlabel("cut / D")
        ax.set_ylabel(metric)
        ax.set_title(f"{title}: {metric}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg, ds, run_dir: Path, student_path: Path | None = None) -> dict:
    from fdkd.pipeline.models.checkpoint import load_model
    from fdkd.pipeline.teacher import load_teacher
    from fdkd.pipeline.train import predict, tensors

    student_path = student_path or run_dir / artifacts.STUDENT
    student, ckpt = load_model(student_path)
    teacher, _ = load_teacher(cfg, cfg.teacher.modality, ds)
    x, _ = tensors(ds)
    test = ds.indices("test")
    workers = cfg.data.workers
    f_s = predict(student, x[ckpt["modality"]], with_features=True, rows=test, workers=workers)[0]
    f_t = predict(teacher, x[cfg.teacher.modality], with_features=True, rows=test, workers=workers)[0]
    projected = False
    proj = (ckpt.get("training_state") or {}).get("projector.weight")
    if proj is not None and proj.shape[0] == f_t.shape[1]:
        f_s = f_s @ proj.T + ckpt["training_state"]["projector.bias"]
        projected = True
    rows = similarity(f_t.numpy(), f_s.detach().numpy(), cfg.seed)
    result = {"student": str(student_path), "method": ckpt["config"]["distill"]["method"],
              "teacher_dim": int(f_t.shape[1]), "student_dim": int(f_s.shape[1]), "projected": projected,
              "rows": rows}
    artifacts.write_json(run_dir / artifacts.ANALYSIS, result)
    plot(rows, run_dir / "analysis.png", f"teacher vs {Path(student_path).name} ({result['method']})")
    return result
