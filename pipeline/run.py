"""``fdkd run``: data -> teacher -> distill -> export -> calibrate -> quantize -> build -> validate.

Everything lands in ``runs/<name>/`` with a ``manifest.json`` (``fdkd.pipeline.run_manifest``). A
stage whose key (its config section and the hashes of its inputs) and outputs (by sha256) match
the manifest is skipped, so a run killed at any point resumes and ends with the same artifacts
as an uninterrupted one; ``force`` redoes named stages. A tampered or truncated artifact is named
and its stage redone. ``STAGES`` is the one ordered table of stage names and functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape

from fdkd import artifacts
from fdkd.pipeline.config import RunConfig, config_to_dict, dump_config
from fdkd.pipeline.data.rows import release_free_heap
from fdkd.pipeline.progress import console
from fdkd.pipeline.run_manifest import RunManifest, library_versions


@dataclass
class Output:
    name: str
    path: Path
    inputs: list[str]
    extra: dict = field(default_factory=dict)


@dataclass
class Ctx:
    cfg: RunConfig
    manifest: RunManifest
    _ds: object = None

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    @property
    def dataset(self):
        if self._ds is None:
            from fdkd.pipeline.data.dataset import load_dataset

            self._ds = load_dataset(self.manifest.path_of("dataset"), self.cfg.data.in_memory,
                                    self.cfg.data.memory_mb)
        return self._ds


def _teacher_modalities(cfg: RunConfig) -> list[str]:
    return [cfg.teacher.modality] + ([cfg.student_modality] if cfg.distill.bidirectional else [])


def stage_data(ctx: Ctx) -> list[Output]:
    from fdkd.pipeline import data

    return [Output("dataset", data.prepare(ctx.cfg), [])]


def stage_teacher(ctx: Ctx) -> list[Output]:
    from fdkd.pipeline import teacher

    outs = []
    for m in _teacher_modalities(ctx.cfg):
        trains = ctx.cfg.teacher.checkpoint is None or m != ctx.cfg.teacher.modality
        if trains and (ctx.cfg.accel.nproc > 1 or ctx.cfg.accel.torchrun_args):
            res = _torchrun(ctx.cfg, f"teacher.{m}", "fdkd.pipeline.teacher_worker", ["--modality", m])
            path, metrics = Path(res["path"]), res["metrics"]
        else:
            path, metrics = teacher.run(ctx.cfg, m)
        name = artifacts.TEACHER.format(modality=m)
        outs.append(Output(name, path, ["dataset"], {"metrics": metrics, "modality": m}))
    return outs


def _torchrun_distill(cfg: RunConfig) -> dict:
    """Distill in ``accel.nproc`` torchrun processes (plus ``accel.torchrun_args``); returns rank 0's results."""
    return _torchrun(cfg, "distill", "fdkd.pipeline.distill_worker")


def _torchrun(cfg: RunConfig, stage: str, module: str, args: list[str] = ()) -> dict:
    """Run a training stage's worker ``module`` in ``accel.nproc`` torchrun processes (plus ``accel.torchrun_args``);
    returns rank 0's result."""
    import json
    import subprocess
    import sys

    conf = cfg.run_dir / f"{stage}.torchrun.yaml"
    result = cfg.run_dir / f"{stage}.torchrun.json"
    artifacts.write_text(conf, dump_config(cfg.model_copy(update={"accel": cfg.accel.model_copy(update={"nproc": 1})})))
    result.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={cfg.accel.nproc}",
           *cfg.accel.torchrun_args, "-m", module, "--config", str(conf), "--result", str(result), *args]
    if not cfg.accel.torchrun_args:
        cmd[3:3] = ["--standalone"]
    console.print(f"[dim]{' '.join(cmd)}[/]", highlight=False)
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"torchrun {stage} failed (exit {proc.returncode}); its workers' output is above")
    return json.loads(result.read_text())


def stage_distill(ctx: Ctx) -> list[Output]:
    from fdkd.pipeline import distill

    if ctx.cfg.accel.nproc > 1 or ctx.cfg.accel.torchrun_args:
        path, results = ctx.run_dir / artifacts.STUDENT, _torchrun_distill(ctx.cfg)
    else:
        path, results = distill.run(ctx.cfg)
    teachers = [artifacts.TEACHER.format(modality=m) for m in _teacher_modalities(ctx.cfg)]
    outs = [Output(artifacts.STUDENT, path, ["dataset", *teachers], {"metrics": results["student"]})]
    if "reverse" in results:
        outs.append(Output(artifacts.STUDENT_REVERSE, ctx.run_dir / artifacts.STUDENT_REVERSE,
                           ["dataset", *teachers], {"metrics": results["reverse"]}))
    return outs


def stage_export(ctx: Ctx) -> list[Output]:
    from fdkd.pipeline import export

    x_val = export.parity_rows(ctx.dataset, ctx.cfg.student_modality, ctx.cfg.export.parity_rows)
    out = ctx.run_dir / artifacts.ONNX_FP32
    info = export.run(ctx.run_dir / artifacts.STUDENT, x_val, out, ctx.cfg.export)
    return [Output(artifacts.ONNX_FP32, out, [artifacts.STUDENT], {"precision": "fp32", **info})]


def stage_calibrate(ctx: Ctx) -> list[Output]:
    from fdkd.calibration.dataset import write_calibration_set
    from fdkd.pipeline.export import INPUT_NAME

    ds = ctx.dataset
    out = ctx.run_dir / artifacts.CALIB
    summary = write_calibration_set(out, INPUT_NAME, ds.x[ctx.cfg.student_modality], ds.y, ds.indices("train"),
                                    ctx.cfg.quantize.calib_samples, ctx.cfg.seed)
    for w in summary["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")
    return [Output(artifacts.CALIB, out, ["dataset"], summary)]


def stage_quantize(ctx: Ctx) -> list[Output]:
    import json
    import tempfile

    from fdkd.calibration.dataset import CalibrationRows
    from fdkd.calibration.quantize import convert_fp16, quantize_int8
    from fdkd.calibration.sensitivity import layer_errors
    from fdkd.pipeline import int8_search, search_record
    from fdkd.pipeline.export import INPUT_NAME

    q = ctx.cfg.quantize
    fp32, rd = ctx.run_dir / artifacts.ONNX_FP32, ctx.run_dir
    inputs = [artifacts.ONNX_FP32, artifacts.CALIB]
    mb = q.calib_activation_mb
    outs = []
    if q.fp16:
        convert_fp16(fp32, rd / artifacts.ONNX_FP16, keep_fp32=q.fp16_keep_fp32)
        outs.append(Output(artifacts.ONNX_FP16, rd / artifacts.ONNX_FP16, [artifacts.ONNX_FP32], {"precision": "fp16"}))
    # the calibration rows are read from the dataset once for every calibrator, sensitivity and search attempt below
    # (a streamed dataset's into a spool file in this temporary folder), each checked against calib.npz's hash
    with tempfile.TemporaryDirectory(dir=rd, prefix=".quantize-") as tmp:
        calib = CalibrationRows(rd / artifacts.CALIB, INPUT_NAME, ctx.dataset.x[ctx.cfg.student_modality], Path(tmp))
        for method in q.calib_methods:
            name = artifacts.ONNX_INT8.format(method=method)
            quantize_int8(fp32, rd / name, calib, INPUT_NAME, method, exclude=q.exclude, percentile=q.percentile,
                          activation_mb=mb)
            outs.append(Output(name, rd / name, inputs,
                               {"precision": "int8", "calibration": method, "target": "tensorrt"}))
        chosen = ctx.cfg.build.int8_method
        quantize_int8(fp32, rd / artifacts.ONNX_INT8_CPU, calib, INPUT_NAME, chosen, exclude=q.exclude,
                      percentile=q.percentile, target="cpu", activation_mb=mb)
        outs.append(Output(artifacts.ONNX_INT8_CPU, rd / artifacts.ONNX_INT8_CPU, inputs,
                           {"precision": "int8", "calibration": chosen, "target": "cpu"}))
        errors = None
        if chosen in q.calib_methods:
            errors = layer_errors(fp32, rd / artifacts.ONNX_INT8.format(method=chosen), calib, INPUT_NAME, mb)
            artifacts.write_text(rd / artifacts.SENSITIVITY, json.dumps({"int8": chosen, "layers": errors}, indent=2))
            outs.append(Output(artifacts.SENSITIVITY, rd / artifacts.SENSITIVITY, inputs,
                               {"worst": errors[: q.sensitivity_top]}))
        # judged on the validation split (never test); a graph that fails there is searched for one that passes
        record = int8_search.run(ctx.cfg, ctx.dataset, errors, calib)
    artifacts.write_json(rd / search_record.SEARCH, record)
    for g in record["graphs"]:
        console.print(f"INT8 {g['target']} graph: " + _search_line(g), highlight=False)
    if (rd / search_record.SEARCHED).exists():
        outs.append(Output(search_record.SEARCHED, rd / search_record.SEARCHED, inputs,
                           {"precision": "int8", "target": "tensorrt", "search": True}))
    outs.append(Output(search_record.SEARCH, rd / search_record.SEARCH, inputs))
    return outs


def _search_line(g: dict) -> str:
    last = g["attempts"][-1]
    if g["passed"] and len(g["attempts"]) == 1:
        return f"{g['chosen']} passed on the validation split ({last['gate']})"
    if g["passed"]:
        floats = f", {len(g['float_layers'])} layer(s) in float" if g["float_layers"] else ""
        return (f"{g['graph']} failed on the validation split; the search passed with {g['calibration']}{floats} "
                f"after {len(g['attempts'])} attempts: {g['chosen']} ({last['gate']})")
    return (f"{g['graph']} failed on the validation split and the search found no passing graph in "
            f"{len(g['attempts'])} attempts ({g['stopped']}): not built, not served")


def stage_build(ctx: Ctx) -> list[Output]:
    from fdkd.pipeline.build import build_engine
    from fdkd.pipeline.search_record import build_source

    b = ctx.cfg.build
    sources = {"fp32": artifacts.ONNX_FP32, "fp16": artifacts.ONNX_FP16,
               "int8": build_source(ctx.run_dir, b.int8_method)}  # the INT8 graph that passed its search
    outs = []
    for precision in b.precisions:
        if sources[precision] is None:
            console.print("[yellow]no INT8 engine:[/] no INT8 graph passed its gate search (int8_search.json)")
            continue
        plan = build_engine(ctx.run_dir / sources[precision], precision, ctx.run_dir, b)
        outs.append(Output(plan.name, plan, [sources[precision]], {"precision": precision}))
        info = plan.with_name(plan.stem + ".build.json")
        outs.append(Output(info.name, info, [plan.name]))
    return outs


def stage_validate(ctx: Ctx) -> list[Output]:
    from fdkd.pipeline import validate

    inputs = STAGES["validate"][2](ctx)
    validate.run(ctx.cfg, ctx.dataset, ctx.run_dir)  # raises ValidationFailed after writing both files
    return [Output(artifacts.VALIDATION, ctx.run_dir / artifacts.VALIDATION, inputs),
            Output(artifacts.REPORT, ctx.run_dir / artifacts.REPORT, inputs),
            Output(artifacts.TESTSET, ctx.run_dir / artifacts.TESTSET, inputs)]


# name -> (function, config sections that shape its outputs, manifest names it reads)
STAGES: dict[str, tuple[Callable[[Ctx], list[Output]], tuple[str, ...], Callable[[Ctx], list[str]]]] = {
    "data": (stage_data, ("data",), lambda c: []),
    "teacher": (stage_teacher, ("seed", "teacher", "threads"), lambda c: ["dataset"]),
    "distill": (stage_distill, ("seed", "distill", "threads", "accel"),
                lambda c: ["dataset", *[artifacts.TEACHER.format(modality=m) for m in _teacher_modalities(c.cfg)]]),
    "export": (stage_export, ("export",), lambda c: [artifacts.STUDENT]),
    "calibrate": (stage_calibrate, ("seed", "quantize"), lambda c: ["dataset", artifacts.ONNX_FP32]),
    # validate: the gate search judges with validate.gates and validate.threads
    "quantize": (stage_quantize, ("quantize", "build", "validate", "threads"),
                 lambda c: ["dataset", artifacts.ONNX_FP32, artifacts.CALIB]),
    "build": (stage_build, ("build",), lambda c: [n for n in c.manifest.data["artifacts"] if n.endswith(".onnx")]),
    # "threads": the default of validate.threads
    "validate": (stage_validate, ("validate", "teacher", "threads"),
                 lambda c: sorted(n for n in c.manifest.data["artifacts"]
                                  if n not in (artifacts.VALIDATION, artifacts.REPORT, artifacts.TESTSET))),
}


TRAINING_STAGES = ("teacher", "distill")


def _numerics(cfg: RunConfig, manifest: RunManifest, stage: str) -> dict:
    """This process's training numerics (threads, OpenMP wait policy, CPU, torch), torchrun's process count where
    it trains; a line on the console where they differ from the run's other training stage as recorded."""
    from fdkd.pipeline import numerics

    now = numerics.current(cfg.threads)  # train.setup sets cfg.threads when the stage starts
    if stage in ("teacher", "distill") and cfg.accel.nproc > 1:
        now["torchrun_processes"] = cfg.accel.nproc
    for other in TRAINING_STAGES:
        diff = numerics.check(manifest.data["stages"].get(other, {}).get("numerics"), now) if other != stage else None
        if diff:
            console.print(f"[yellow]{stage} trains with other numerics than this run's {other} ({escape(diff)}): "
                          "its weights will not be those of a run made here at once[/]", highlight=False)
    return now


def _stage_key(ctx: Ctx, stage: str) -> str:
    _, sections, reads = STAGES[stage]
    cfg = config_to_dict(ctx.cfg)
    key = {"stage": stage, "config": {s: cfg.get(s) for s in sections},
           "inputs": {n: ctx.manifest.sha(n) for n in reads(ctx)}}
    # weight files named by the config (init, a given teacher) by content: a file replaced at the same path redoes
    # the stages that read it
    files = {"teacher": [ctx.cfg.teacher.model.init, ctx.cfg.teacher.checkpoint],
             "distill": [ctx.cfg.distill.student.init, ctx.cfg.teacher.checkpoint]}.get(stage, [])
    if any(f is not None for f in files):
        key["files"] = [artifacts.sha256_file(f) if f is not None and Path(f).is_file() else None for f in files]
    if stage == "build":
        from fdkd.serving.runtime.cuda_env import gpu_info, tensorrt_version

        key["machine"] = {"tensorrt": tensorrt_version(), "gpu": gpu_info()}
    return artifacts.digest(key)


def run(cfg: RunConfig, force: tuple[str, ...] = (), stop_after: str | None = None) -> dict:
    """Run (or resume) every stage; returns the manifest data. Raises on a failed stage or gate.

    Where ``tracking.mlflow`` allows, the whole run is one MLflow run (``fdkd.pipeline.tracking.mlflow_run``)."""
    from fdkd.pipeline import tracking

    with tracking.mlflow_run(cfg) as ml:
        return _run(cfg, force, stop_after, ml)


def _run(cfg: RunConfig, force: tuple[str, ...], stop_after: str | None, ml) -> dict:
    from fdkd.pipeline.build import BuildUnavailable
    from fdkd.pipeline.validate import ValidationFailed

    unknown = [s for s in force if s not in STAGES]
    if unknown:
        raise ValueError(f"--force: unknown stage(s) {unknown}; stages are {list(STAGES)}")
    if not cfg.run_dir.exists():
        # Bad user data fails here, before the run directory exists: never a half-made run. The
        # dataset file is cached by content, so the data stage below finds it and does no work.
        from fdkd.pipeline import data

        data.prepare(cfg)
    if cfg.teacher.checkpoint is not None:
        # a frozen teacher of another class count (a 1000-class ImageNet head) is refused before any stage runs,
        # not deep in distill; the dataset file is cached by content, so this prepares nothing twice
        from fdkd.pipeline import data, teacher

        data.prepare(cfg)
        teacher.load_teacher(cfg, cfg.teacher.modality, data.load(cfg))
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    manifest = RunManifest.load(cfg.run_dir)
    manifest.data.update({"name": cfg.name, "config": config_to_dict(cfg), "versions": library_versions()})
    artifacts.write_text(cfg.run_dir / "config.yaml", dump_config(cfg))
    ctx = Ctx(cfg, manifest)
    for stage, (fn, _, _) in STAGES.items():
        key = _stage_key(ctx, stage)
        current, problems = manifest.stage_current(stage, key)
        for p in problems:
            console.print(f"[yellow]{escape(p)}[/]: redoing stage {stage}", highlight=False)
        if current and stage not in force:
            console.print(f"[dim]{stage}: up to date, skipped[/]")
        else:
            console.print(f"[bold]{stage}[/]")
            record = {"key": key, "status": "done"}
            if stage in TRAINING_STAGES:  # what fixes its weights (fdkd.pipeline.numerics)
                record["numerics"] = _numerics(cfg, manifest, stage)
            try:
                outputs = fn(ctx)
            except BuildUnavailable as e:
                outputs, record = [], {"key": key, "status": "skipped", "reason": str(e)}
                console.print(f"[yellow]build skipped:[/] {escape(str(e))}", highlight=False)
            except ValidationFailed:  # keep the evidence: validation.json and report.md are written
                names = [artifacts.VALIDATION, artifacts.REPORT, artifacts.TESTSET]
                for n in names:
                    manifest.record(n, cfg.run_dir / n, stage, STAGES[stage][2](ctx))
                manifest.data["stages"][stage] = {"key": key, "status": "failed", "outputs": names}
                manifest.save()
                raise
            except Exception:
                manifest.data["stages"][stage] = {"key": key, "status": "failed", "outputs": []}
                manifest.save()
                raise
            for o in outputs:
                manifest.record(o.name, o.path, stage, o.inputs, **o.extra)
            manifest.data["stages"][stage] = record | {"outputs": [o.name for o in outputs]}
            manifest.save()
            release_free_heap()  # what the stage freed goes back to the OS, not on to the next stage (glibc)
        if stage == "data":
            ds_front = ctx.dataset.frontends[cfg.student_modality]
            manifest.data.update({"class_names": ctx.dataset.class_names, "student_modality": cfg.student_modality,
                                  "teacher_modality": cfg.teacher.modality, "preprocessing": ds_front.to_dict()})
        if ml is not None:  # the training stages' metrics.jsonl, run now or before
            ml.after_stage(stage)
        if stage == stop_after:
            break
    manifest.save()
    return manifest.data
