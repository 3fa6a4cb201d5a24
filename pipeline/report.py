"""``report.md`` and its plots (matplotlib PNGs) from a validation result.

Plots: confusion matrix of ``student.pt`` on the test split, per-class accuracy of every
artifact, and accuracy against latency per artifact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fdkd import artifacts


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


def _check_text(c: dict) -> str:
    text = (f"{c['metric']} {c['value']:.3g} {c['op']} {c['limit']}" if isinstance(c["value"], float)
            else f"{c['metric']} {c['value']} {c['op']} {c['limit']}")
    if c.get("decide") == "paired":  # decided on the rows that changed, with the sampling error in view
        rows = (f"{c['rows_lost']} rows lost, {c['rows_gained']} gained" if "rows_lost" in c
                else f"{c['rows_changed']} rows changed")
        text += f" [{rows}, p={c['p_value']:.2g}" + ("; beyond the limit by chance" if not c["point_passed"]
                                                     and c["passed"] else "") + "]"
    return text


def _gate_cell(g: dict | None) -> str:
    if g is None:
        return "-"
    checks = g.get("checks") or [g | {"op": "<="}]
    detail = "; ".join(_check_text(c) for c in checks)
    return ("pass" if g["passed"] else "**FAIL**") + f" ({detail})"


def _mode_cell(a: dict) -> str:
    m = a.get("mode") or {}
    if m.get("runtime") == "onnxruntime":
        qdq = {"fused": f", Q/DQ fused ({m.get('int8_kernels', '?')} kernels)",
               "emulated": ", Q/DQ emulated"}.get(m.get("qdq"), "")
        return f"ort {m['provider'].removesuffix('ExecutionProvider')} opt={m['graph_optimization']}{qdq}, " \
               f"threads={m.get('threads') or 'default'}"
    if m.get("runtime") == "tensorrt":
        return f"tensorrt {m.get('tensorrt')} on {m.get('gpu')}"
    return m.get("runtime", "-")


def summary_table(result: dict) -> str:
    rows = ["| artifact | precision | runs on | mode | sha256 | accuracy % | agree teacher % | agree student.pt % "
            "| max abs dlogit | KL | ms / batch | gate |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in result["artifacts"]:
        sha = a.get("sha256", "")[:12] or "-"
        if "skipped" in a:
            rows.append(f"| {a['name']} | {a['precision']} | {a['target']} | - | {sha} | "
                        f"NOT VALIDATED: {a['skipped']} |||||||")
            continue
        m = a["metrics"]
        gate = _gate_cell(a.get("gate"))
        if a.get("gate") and not a["gate"]["passed"] and not a.get("required", True):
            gate += " (this mode is not servable; the artifact's gate is its other entry)"
        cells = [_fmt(m, k, f) for k, f in (("accuracy", "%"), ("agree_teacher", "%"), ("agree_student_pt", "%"),
                                              ("max_abs_logit", ".2e"), ("kl_to_student_pt", ".2e"),
                                              ("ms_per_batch", ".2f"))]
        rows.append(f"| {a['name']} | {a['precision']} | {a['target']} | {_mode_cell(a)} | {sha} | "
                    + " | ".join(cells) + f" | {gate} |")
    return "\n".join(rows)


def headline(result: dict) -> str:
    """``PASSED``, ``FAILED``, plus ``(incomplete: N not validated here)`` when something could not run."""
    if result["passed"]:
        verdict = "PASSED"
    elif result.get("shipped"):
        verdict = f"SHIPPED WHAT PASSED ({len(result.get('failed', []))} artifact(s) failed, never served)"
    else:
        verdict = "FAILED"
    missing = result.get("not_validated", [])
    return verdict + (f" (incomplete: {len(missing)} not validated here)" if missing else "")


def _fmt(metrics: dict, key: str, fmt: str) -> str:
    if key not in metrics:
        return "-"
    return f"{100 * metrics[key]:.1f}" if fmt == "%" else format(metrics[key], fmt)


def candidates_table(auto: dict) -> str:
    """``method: auto``: every candidate's accuracies, its lead over ``none`` on the judged rows, and which shipped.

    Results written before the judge half (no ``judge_acc``) show the columns they have."""
    judged = all("judge_acc" in c for c in auto["candidates"])
    crossfit = auto.get("judge") == "crossfit"
    head = f"| candidate | method | val acc % ({'all, shipped epoch' if crossfit else 'select half'}) | "
    head += "judge acc % | lead over none, pt (SE) | passes margin | " if judged else ""
    head += "test acc % | best epoch | shipped |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in auto["candidates"]:
        mark = "**yes**" if c["name"] == auto["winner"] else ""
        row = f"| {c['name']} | {c['method']} | {100 * c['val_acc']:.1f} | "
        if judged:
            se = "-" if c.get("se_judge_pt") is None else f"{c['se_judge_pt']:.1f}"
            row += (f"{100 * c['judge_acc']:.1f} | {c['lead_judge_pt']:+.1f} ({se}) | "
                    f"{'yes' if c['passes_margin'] else ''} | ")
        rows.append(row + f"{100 * c['test_acc']:.1f} | {c['epoch']} | {mark} |")
    return "\n".join(rows)


def labels_line(labels: dict) -> str:
    """What the student's training labels were: the fraction labelled and any injected noise."""
    n, k = labels["train_rows"], labels["train_labelled"]
    in_file = labels.get("train_unlabelled_in_file", 0)
    source = f"`data.labelled: {labels['labelled_fraction']}`"
    if in_file:
        source = f"{in_file} with an empty label in the data file" + (
            f", then {source}" if labels["labelled_fraction"] < 1 else "")
    text = (f"**{100 * k / max(n, 1):.1f} % of the training pairs were labelled** ({k} of {n}; {source}); the "
            f"other {labels['train_unlabelled']} reach only the teacher's terms, never the cross-entropy.")
    if labels.get("label_noise"):
        text += (f" `data.label_noise: {labels['label_noise']}`: {labels['train_noisy']} of the kept labels "
                 "were flipped to another class (validation and test labels are clean).")
    return text


def selection_text(auto: dict) -> list[str]:
    w, mv, mt = auto["winner"], auto["margin_val_pt"], auto["margin_test_pt"]
    judged = "margin_se" in auto
    crossfit = auto.get("judge") == "crossfit"
    where = ("on validation, cross-fitted" if crossfit else "on the judge half of validation") if judged \
        else "on validation"
    if auto.get("winner_plain", auto["winner_method"] == "none"):  # results written before winner_plain
        verdict = (f"No distillation candidate beat training alone {where}"
                   + (f" by more than {auto['margin_se']:g} standard errors" if judged else "")
                   + f", so the student trained alone (`{w}`) ships.")
    elif auto["winner_method"] == "none":
        verdict = (f"`{w}` ships: method `none` with its own overrides (a control such as label smoothing, "
                   f"so not training alone), {mv:+.1f} points over training alone {where}, {mt:+.1f} on "
                   "test (test is reported, never used to choose).")
    else:
        verdict = (f"`{w}` ships: {mv:+.1f} points over training alone (`none`) {where}, "
                   f"{mt:+.1f} on test (test is reported, never used to choose).")
    if crossfit:
        rule = (f"Every candidate trained with the same initial weights and batches on one shared teacher cache. "
                f"Validation is halved, stratified by class; each half picks every candidate's epoch for judging the "
                f"other half, so all {auto['judge_rows']} validation rows are judged by an epoch they did not pick, "
                f"compared with `{auto['baseline']}` row by row; a candidate ships (at its best epoch on all of "
                f"validation) only when its lead exceeds {auto['margin_se']:g} paired standard errors "
                "(`distill.auto.margin_se`), else training alone ships.")
    elif judged:
        rule = (f"Every candidate trained with the same initial weights and batches on one shared teacher cache. "
                f"Validation is halved, stratified by class: the select half picks each candidate's best epoch, "
                f"the judge half ({auto['judge_rows']} rows) compares it with `{auto['baseline']}` row by row; "
                f"a candidate ships only when its lead exceeds {auto['margin_se']:g} paired standard errors "
                "(`distill.auto.margin_se`), else training alone ships.")
    else:
        rule = ("Every candidate trained with the same initial weights and batches on one shared teacher cache; "
                "the best validation accuracy of the student's own head ships, `none` on ties.")
    return ["## Distillation: candidates (`method: auto`)", "", rule, "", candidates_table(auto), "", verdict, ""]


def training_lines(result: dict) -> list[str]:
    """Why each trained stage stopped (``training`` in validation.json: ``fdkd.pipeline.train.Budget``)."""
    lines = []
    for stage in ("teacher", "distill"):
        t = (result.get(stage) or {}).get("training")
        if t:
            resumed = f"; resumed after epoch {t['resumed_from_epoch']}" if t.get("resumed_from_epoch") else ""
            lines.append(f"- {stage}: {t['epochs_run']} epochs, {t['steps']} optimizer steps ({t['optimizer']}, "
                         f"{t['schedule']}); why it stopped: {t['stopped']}{resumed}.")
    return ["## Training", "", *lines, ""] if lines else []


def models_line(models: dict) -> str:
    """The teacher's and the student's architectures, and the weight file each started from (its sha256)."""
    parts = []
    for role in ("teacher", "student"):
        m = models[role]
        text = f"{role} `{m['arch']}`"
        if m.get("init"):
            text += f" initialised from `{m['init']['path']}` (sha256 `{m['init']['sha256']}`"
            text += ", classifier replaced)" if m["init"].get("head_replaced") else ")"
        elif m["arch"] in ("torchscript", "state dict"):
            text += f" from `{m['path']}`"
        else:
            text += " trained from random weights"
        if m.get("input_norm"):
            text += f", its own input normalisation (mean {m['input_norm']['mean']}, std {m['input_norm']['std']})"
        parts.append(text)
    return "Models: " + "; ".join(parts) + "."


def gates_text(result: dict) -> list[str]:
    """How the gates decide, the failed artifacts, and the test split's resolution warnings."""
    text = ["FP16 and INT8 checks decide on the rows that changed (`validate.gates.decide: paired`): a check fails "
            "only when those rows show, at one-sided level `validate.gates.alpha`, that the accuracy drop or the "
            "disagreement is beyond its limit (an exact binomial test; the README's *Gates* section). INT8 served "
            "by ONNX Runtime's CPU kernels is held to `int8_cpu_max_acc_drop_pt`.", ""]
    if result.get("failed"):
        text += [f"**Failed, never served or built:** {', '.join(result['failed'])}. "
                 + ("The run ships what passed: " + "; ".join(f"{t}: {', '.join(n)}" for t, n in
                                                               result.get("targets", {}).items() if n) + "."
                    if result.get("shipped") else ""), ""]
    text += [f"- warning: {w}" for w in result.get("warnings", [])] + ([""] if result.get("warnings") else [])
    return text


def search_text(search: dict) -> list[str]:
    """The INT8 gate search: per graph, every attempt on the validation split and what it scored."""
    text = ["## INT8 gate search (validation split)", "",
            f"Each INT8 graph is judged first on the **validation** split ({search['rows']} rows, against "
            f"`{search['reference']}` there; never the test split). One that fails is searched: every calibrator, "
            "then the layers `sensitivity.json` ranks worst kept in float, one more at a time, "
            "within a budget. The graph that passed is what the build and the server use; it is then gated on "
            "test above like every artifact.", ""]
    for g in search["graphs"]:
        b = g["budget"]
        verdict = (f"passed: **{g['chosen']}** ({g['calibration']}"
                   + (f" {g['percentile']:g}" if g.get("percentile") is not None else "")
                   + (f", in float: {', '.join(g['float_layers'])}" if g["float_layers"] else "") + ")"
                   if g["passed"] else f"**no passing graph** ({g['stopped']}): this precision failed, never served")
        text += [f"### {g['target']}: {g['graph']}", "",
                 f"Bar: accuracy drop <= {g['bar']['max_acc_drop_pt']:g} points, agreement >= "
                 f"{g['bar']['min_agree_pct']:g} % ({g['bar']['decide']}); budget {b['max_float_layers']} of "
                 f"{b['quantized_layers']} layers in float, {b['max_passes']} passes. Result: {verdict}.", "",
                 "| # | step | calibration | layers in float | val acc % | drop pt | agree % | rows lost / gained "
                 "| gate |", "|---|---|---|---|---|---|---|---|---|"]
        for k, a in enumerate(g["attempts"], 1):
            cal = a["calibration"] + (f" {a['percentile']:g}" if a.get("percentile") is not None else "")
            lost = "-" if a.get("rows_lost") is None else f"{a['rows_lost']} / {a['rows_gained']}"
            text.append(f"| {k} | {a['step']} | {cal} | {', '.join(a['float_layers']) or '-'} | "
                        f"{100 * a['val_accuracy']:.1f} | {a['drop_pt']:.2f} | {a['agree_pct']:.1f} | {lost} | "
                        f"{'pass' if a['passed'] else 'FAIL'} |")
        text.append("")
    return text


def write_report(result: dict, run_dir: Path) -> None:
    pngs = _plots(result, run_dir)
    text = [f"# Validation report: {headline(result)}", "",
            f"Held-out **{result['split']}** split, {result['rows']} rows; student modality "
            f"`{result['student_modality']}`, teacher modality `{result['teacher_modality']}`. Agreement and "
            "deltas are against `student.pt`. Each row is one artifact (its sha256) in one execution mode; "
            "`fdkd serve` loads an artifact only in a mode whose row passed.", "",
            "The TensorRT INT8 graphs are run twice here. *Q/DQ emulated* (unfused) computes the graph as "
            "written: its reference semantics, and the row that gates the graph. TensorRT does not run it that "
            "way: it fuses Q/DQ into INT8 kernels and approximates the reference (the engine is gated on its own "
            "row once it is built and run on its GPU). *Q/DQ fused* is ONNX Runtime's CPU INT8 kernels, how a "
            "CPU would serve the graph; their results depend on the CPU's kernel family (x86 without VNNI "
            "saturates where VNNI does not), so a fused row holds for CPUs of its family only.", "",
            summary_table(result), ""]
    if result.get("models"):
        text += [models_line(result["models"]), ""]


    text += gates_text(result)
    if result.get("int8_search"):
        text += search_text(result["int8_search"])
    missing = result.get("not_validated", [])
    if missing:
        text += ["## Not validated here", "", "These were **not** validated on this machine and are not "
                 "servable until they are (`complete: false`):", ""]
        text += [f"- {m['name']}: {m['reason']}" for m in missing] + [""]
    if "unseen_accent" in result:
        u = result["unseen_accent"]
        text += [f"`student.pt` on unseen accents ({', '.join(u['accents']) or 'held out'}; split `{u['split']}`, "
                 f"{u['rows']} rows, never heard in training): **{100 * u['test_unseen_accent_acc']:.1f} %**, "
                 f"against {100 * u['test_acc']:.1f} % in-domain.", ""]
    labels = (result.get("distill") or {}).get("labels")
    if labels and (labels["train_unlabelled"] or labels.get("label_noise")):
        text += [labels_line(labels), ""]
    auto = (result.get("distill") or {}).get("auto")
    if auto:
        text += selection_text(auto)
    text += training_lines(result)
    text += [f"![{p}]({p})" for p in pngs]
    artifacts.write_text(run_dir / artifacts.REPORT, "\n".join(text) + "\n")
