"""``report.md`` and its plots (matplotlib PNGs) from a validation result.

Plots: confusion matrix of ``student.pt`` on the test split, per-class accuracy of every
artifact, and accuracy against latency per artifact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import artifacts


def _plots(result: dict, run_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result["class_names"]
    y = np.array(result["labels"])
    runs = [a for a in result["artifacts"] if "predictions" in a]
    files = []

    pred = np.array(runs[0]["predictions"])
    cm = np.zeros((len(names), len(names)), int)
    np.add.at(cm, (y, pred), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for (i, j), c in np.ndenumerate(cm):
        ax.text(j, i, str(c), ha="center", va="center", fontsize=7, color="white" if c > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{runs[0]['name']}: confusion matrix (test)")
    fig.tight_layout()
    fig.savefig(run_dir / "report_confusion.png", dpi=110)
    plt.close(fig)
    files.append("report_confusion.png")

    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.8), 4))
    width = 0.8 / len(runs)
    for k, a in enumerate(runs):
        p = np.array(a["predictions"])
        acc = [float((p[y == c] == c).mean()) if (y == c).any() else 0.0 for c in range(len(names))]
        ax.bar(np.arange(len(names)) + k * width, acc, width, label=a["name"])
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, ha="right")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    ax.set_title("per-class accuracy (test)")
    fig.tight_layout()
    fig.savefig(run_dir / "report_per_class.png", dpi=110)
    plt.close(fig)
    files.append("report_per_class.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    markers = "osD^vP*Xh<>"
    for k, a in enumerate(runs):
        m = a["metrics"]
        ax.scatter(m["ms_per_batch"], 100 * m["accuracy"], marker=markers[k % len(markers)], s=60, alpha=0.8,
                   label=a["name"])
    ax.legend(fontsize=7)
    ax.set_xlabel(f"latency per batch of {runs[0]['metrics']['batch']} (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs latency")
    fig.tight_layout()
    fig.savefig(run_dir / "report_accuracy_latency.png", dpi=110)
    plt.close(fig)
    files.append("report_accuracy_latency.png")
    return files


def summary_table(result: dict) -> str:
    rows = ["| artifact | precision | runs on | accuracy % | agree teacher % | agree student.pt % | max abs dlogit "
            "| KL | ms / batch | gate |", "|---|---|---|---|---|---|---|---|---|---|"]
    for a in result["artifacts"]:
        if "skipped" in a:
            rows.append(f"| {a['name']} | {a['precision']} | {a['target']} | skipped: {a['skipped']} |||||||")
            continue
        m = a["metrics"]
        g = a.get("gate")
        gate = "-" if g is None else ("pass" if g["passed"] else "**FAIL**") + (
            f" ({g['metric']} {g['value']:.3g} <= {g['limit']})" if g else "")

        cells = [_fmt(m, k, f) for k, f in (("accuracy", "%"), ("agree_teacher", "%"), ("agree_student_pt", "%"),
                                              ("max_abs_logit", ".2e"), ("kl_to_student_pt", ".2e"),
                                              ("ms_per_batch", ".2f"))]
        rows.append(f"| {a['name']} | {a['precision']} | {a['target']} | " + " | ".join(cells) + f" | {gate} |")
    return "\n".join(rows)


def _fmt(metrics: dict, key: str, fmt: str) -> str:
    if key not in metrics:
        return "-"
    return f"{100 * metrics[key]:.1f}" if fmt == "%" else format(metrics[key], fmt)


def write_report(result: dict, run_dir: Path) -> None:
    pngs = _plots(result, run_dir)
    verdict = "PASSED" if result["passed"] else "FAILED"
    text = [f"# Validation report: {verdict}", "",
            f"Held-out **{result['split']}** split, {result['rows']} rows; student modality "
            f"`{result['student_modality']}`, teacher modality `{result['teacher_modality']}`. Agreement and "
            "deltas are against `student.pt`; INT8 Q/DQ graphs for TensorRT are computed as written (Q/DQ "
            "not fused), which is how TensorRT reads them.", "", summary_table(result), ""]
    if "unseen_accent" in result:
        u = result["unseen_accent"]
        text += [f"`student.pt` on unseen accents ({', '.join(u['accents']) or 'held out'}; split `{u['split']}`, "
                 f"{u['rows']} rows, never heard in training): **{100 * u['test_unseen_accent_acc']:.1f} %**, "
                 f"against {100 * u['test_acc']:.1f} % in-domain.", ""]
    text += [f"![{p}]({p})" for p in pngs]
    artifacts.write_text(run_dir / artifacts.REPORT, "\n".join(text) + "\n")
