"""The ``fdkd`` command line (typer). Each command is a thin shell over one stage's ``run``.

Every stage command takes ``--config FILE`` (default: the built-in avdigits config) and any
number of ``--set a.b=c`` overrides; errors are printed as one clear message, exit code 2 for
bad configuration or input, 1 for a failed stage.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import typer
from rich.markup import escape

from fdkd.pipeline.progress import console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fdkd: cross-modal distillation (FD-CMKD) to a validated edge student.")
data_app = typer.Typer(no_args_is_help=True, help="Build the built-in paired data or check a user manifest.")
app.add_typer(data_app, name="data")

ConfigOpt = typer.Option(None, "--config", "-c", help="Run config YAML (default: built-in avdigits).")
SetOpt = typer.Option([], "--set", "-s", help="Override a config key: --set distill.optim.epochs=5")
NameOpt = typer.Option(None, "--name", help="Run name (directory under runs_dir); same as --set name=...")


@app.callback()
def _numerics() -> None:
    """Before any command imports torch: OpenMP's idle threads sleep instead of spinning (a busy machine slows a
    training stage in proportion instead of stalling it) and MKL keeps the thread count it is given
    (``fdkd.pipeline.numerics``)."""
    from fdkd.pipeline.numerics import prepare_openmp

    prepare_openmp()


def _fail(msg: str, code: int = 2):
    console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False)
    raise typer.Exit(code)


def handles_errors(fn):
    """Turn the expected failures into one clear message instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from fdkd.pipeline.config import ConfigError

        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except (ConfigError, FileNotFoundError, ValueError) as e:
            _fail(str(e))
        except RuntimeError as e:
            _fail(str(e), 1)
        except OSError as e:  # permissions, a full disk: the file and the reason, not a traceback
            _fail(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""), 1)

    return wrapper


def _config(config: Path | None, sets: list[str], **extra):
    from fdkd.pipeline.config import load_config

    overrides = list(sets) + [f"{k}={v}" for k, v in extra.items() if v is not None]
    return load_config(config, overrides)


@data_app.command("avdigits")
@handles_errors
def data_avdigits(config: Path | None = ConfigOpt, sets: list[str] = SetOpt):
    """Build the built-in avdigits set: sklearn digit images + eSpeak NG spoken digits (cached)."""
    _build_builtin(_config(config, sets, **{"data.source": "avdigits"}))


@data_app.command("avmnist")
@handles_errors
def data_avmnist(config: Path | None = ConfigOpt, sets: list[str] = SetOpt):
    """Build the larger avmnist benchmark set: 5,000 MNIST digits x 4 clips (needs fdkd[avmnist])."""
    _build_builtin(_config(config, ["data.avdigits.preset=avmnist", "data.avdigits.clips_per_image=4", *sets],
                           **{"data.source": "avdigits"}))


@data_app.command("avblend")
@handles_errors
def data_avblend(config: Path | None = ConfigOpt, sets: list[str] = SetOpt,
                 shared: float | None = typer.Option(None, help="Fraction of pairs sharing (second class, w, "
                                                               "quality) across modalities; 0 = class-level")):
    """Build the instance-paired avblend set: blended digits + blended spoken words, one event per pair."""
    _build_builtin(_config(config, sets, **{"data.source": "avblend", "data.avblend.shared": shared}))


def _build_builtin(cfg) -> None:
    import time

    from fdkd.pipeline import data
    from fdkd.pipeline.data.dataset import ALL_SPLITS, SPLITS
    from fdkd.pipeline.data.store import Store

    t0 = time.perf_counter()
    with console.status("building paired data") as status:
        path = data.prepare(cfg, progress=status.update)
        store = Store(path)  # the record and index only: counting rows decodes nothing
    n = {s: int((store.split == i).sum()) for i, s in enumerate(ALL_SPLITS)}
    counts = ", ".join(f"{s} {n[s]}" for s in ALL_SPLITS if s in SPLITS or n[s])
    voices = {s: len(v) for s, v in store.meta["voice_splits"].items()}
    console.print(f"[green]dataset[/] {path}  ({counts}; voice variants per split {voices}; "
                  f"{time.perf_counter() - t0:.1f} s)", highlight=False)


@data_app.command("webdataset")
@handles_errors
def data_webdataset(shards: list[Path] = typer.Argument(..., help="WebDataset .tar shards, in order"),
                    out: Path = typer.Option(..., help="New folder for the files and manifest.csv"),
                    teacher: str = typer.Option(..., help="The teacher's member (extension), e.g. jpg"),
                    student: str = typer.Option(..., help="The student's member (extension), e.g. wav"),
                    label: str = typer.Option("cls", help="The member holding the class name as text"),
                    split: str | None = typer.Option(None, help="A member holding train/val/test, if any")):
    """Unpack a WebDataset shard set into files and a manifest (then check it with `fdkd data manifest`)."""
    from fdkd.pipeline.data.webdataset import unpack

    path = unpack(shards, out, teacher, student, label, split)
    rows = len(path.read_text().splitlines()) - 1
    console.print(f"[green]manifest[/] {escape(str(path))}: {rows} samples from {len(shards)} shard(s)",
                  highlight=False)


@data_app.command("manifest")
@handles_errors
def data_manifest(path: Path = typer.Argument(..., help="CSV or JSONL manifest, or a Hugging Face datasets folder"),
                  sample_rate: int = typer.Option(16000, help="Expected WAV sample rate"),
                  classes: str | None = typer.Option(None, help="Comma-separated known labels"),
                  max_file_mb: float = typer.Option(64.0, help="Largest file to read, in MB"),
                  seed: int = typer.Option(0, help="Seed of the split when the manifest has no split column"),
                  columns: str | None = typer.Option(None, help="A Hugging Face datasets folder's columns, e.g. "
                                                     "teacher=img,student=speech,label=digit (data.manifest.columns)"),
                  as_json: bool = typer.Option(False, "--json", help="Print the report as JSON")):
    """Check a user manifest: every problem of every row, in one report, and the labelled and unlabelled
    (empty label) rows of every split."""
    from fdkd.pipeline.data.manifest import check

    mapping = dict(kv.split("=", 1) for kv in columns.split(",") if "=" in kv) if columns else None
    if columns and len(mapping) != len(columns.split(",")):
        _fail(f"--columns {columns!r}: write role=column pairs separated by commas (teacher=img,student=speech)")
    c = check(path, sample_rate, classes.split(",") if classes else None, max_file_mb=max_file_mb, seed=seed,
              columns=mapping)
    rows, problems, counts = c.rows, c.problems, c.counts()
    if as_json:
        typer.echo(json.dumps({"rows": len(rows), "splits": counts, "problems": [p.__dict__ for p in problems],
                               "warnings": c.warnings, "notes": c.notes}, indent=2))
    elif problems:
        from rich.table import Table

        table = Table(title=f"{path}: {len(problems)} problem(s) in {len(rows)} row(s)")
        for col in (problems[0].unit, "column", "path", "problem"):  # a datasets folder's rows, a manifest's lines
            table.add_column(col)
        for p in problems:
            table.add_row(str(p.line or ""), p.column, p.path, p.message)
        console.print(table)
    else:
        console.print(f"[green]ok[/] {escape(str(path))}: {len(rows)} rows, no problems", highlight=False)
    if not as_json and counts:
        console.print("; ".join(f"{s} {k['rows']} ({k['labelled']} labelled, {k['unlabelled']} unlabelled)"
                                for s, k in counts.items()), highlight=False)
    if not as_json:
        for w in c.warnings:
            console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
        for n in c.notes:  # what a build at these settings changes: resizes, resampling, crops
            console.print(f"note: {escape(n)}", highlight=False)
    if problems:
        raise typer.Exit(1)


def _run_to(cfg, stage: str | None, force: tuple[str, ...] = ()):
    """Bring the run directory up to ``stage`` (skipping up-to-date stages), redoing ``force``."""
    from fdkd.pipeline import run as pipeline_run

    return pipeline_run.run(cfg, force=force, stop_after=stage)


@app.command()
@handles_errors
def teacher(config: Path | None = ConfigOpt, sets: list[str] = SetOpt, name: str | None = NameOpt,
            modality: str | None = typer.Option(None, help="Train one more teacher, on this modality "
                                                   "(the teacher's or the student's), outside the run's stages")):
    """Train the unimodal teacher on its modality (or check the one given by teacher.checkpoint)."""
    cfg = _config(config, sets, name=name)
    if modality is not None:
        from fdkd.pipeline import teacher as stage

        if modality not in (cfg.teacher.modality, cfg.student_modality):
            _fail(f"--modality must be {cfg.teacher.modality} or {cfg.student_modality} (the run's two inputs), "
                  f"got {modality!r}")
        path, metrics = stage.run(cfg, modality)
        console.print(f"[green]teacher[/] {path}  {json.dumps(metrics)}", highlight=False)
        return
    manifest = _run_to(cfg, "teacher", ("teacher",))
    for n, rec in manifest["artifacts"].items():
        if n.startswith("teacher."):
            console.print(f"[green]{n}[/] {rec['path']}  {escape(json.dumps(rec.get('metrics', {})))}", highlight=False)


@app.command()
@handles_errors
def distill(config: Path | None = ConfigOpt, sets: list[str] = SetOpt, name: str | None = NameOpt,
            method: str | None = typer.Option(None, help="auto (the best of distill.auto.candidates on "
                                                     "validation) | none | self-training | pseudo | kd | feat | dkd "
                                                     "| dist | fd"),
            bidirectional: bool | None = typer.Option(None, "--bidirectional/--one-way",
                                                         help="Also train the reverse direction"),
            seed: int | None = typer.Option(None, help="Random seed"),
            nproc: int | None = typer.Option(None, help="Processes (GPUs) on this node, launched with torchrun")):
    """Distill the student from the frozen teacher (FD-CMKD or a baseline)."""
    extra = {"name": name, "distill.method": method, "seed": seed, "accel.nproc": nproc,
             "distill.bidirectional": None if bidirectional is None else str(bidirectional).lower()}
    manifest = _run_to(_config(config, sets, **extra), "distill", ("distill",))
    for n in ("student.pt", "student.reverse.pt"):
        if n in manifest["artifacts"]:
            rec = manifest["artifacts"][n]
            console.print(f"[green]{n}[/] {rec['path']}  {json.dumps(rec['metrics'])}", highlight=False)


def _run_stage(stage: str, config: Path | None, sets: list[str], name: str | None) -> None:
    manifest = _run_to(_config(config, sets, name=name), stage, (stage,))
    rec = manifest["stages"][stage]
    if rec["status"] == "skipped":
        _fail(f"{stage} skipped: {rec.get('reason')}", 1)
    for n in rec["outputs"]:
        console.print(f"[green]{n}[/] {manifest['artifacts'][n]['sha256'][:12]}", highlight=False)


def _stage_command(stage: str, doc: str):
    def command(config: Path | None = ConfigOpt, sets: list[str] = SetOpt, name: str | None = NameOpt):
        _run_stage(stage, config, sets, name)

    command.__doc__ = doc
    app.command(stage)(handles_errors(command))


# `fdkd export` is the export stage; `fdkd export triton RUN OUT` is a subcommand of the same group
# (the group's callback runs the stage only when no subcommand is given).
export_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)
app.add_typer(export_app, name="export")


@export_app.callback()
@handles_errors
def export(ctx: typer.Context, config: Path | None = ConfigOpt, sets: list[str] = SetOpt, name: str | None = NameOpt):
    """Export student.pt to ONNX (checker, TensorRT lint, parity with PyTorch at batch 1/7/64).

    `fdkd export triton RUN OUT` instead writes a finished run as a Triton model repository + KServe manifest.
    """
    if ctx.invoked_subcommand is None:
        _run_stage("export", config, sets, name)
    elif config is not None or sets or name is not None:
        _fail(f"--config/--set/--name belong to the export stage, not to `fdkd export {ctx.invoked_subcommand}`")


@export_app.command("triton")
@handles_errors
def export_triton(run_dir: Path = typer.Argument(..., help="A finished run directory (manifest + validation)"),
                  out: Path = typer.Argument(..., help="Output folder (new, or an earlier export to replace)"),
                  onnx: str = typer.Option("student.onnx", help="Which of the run's ONNX graphs to export"),
                  max_batch: int = typer.Option(64, help="max_batch_size of the ONNX model"),
                  max_queue_delay_ms: float = typer.Option(0.0, help="Dynamic batching: wait this long for rows"),
                  onnx_device: str = typer.Option("cpu", help="Instance kind of the ONNX model: cpu | gpu"),
                  storage_uri: str | None = typer.Option(None, help="Where the cluster reads the repository "
                                                                    "(default pvc://fdkd-models/<name>)"),
                  runtime_version: str | None = typer.Option(
                      None, help="KServe runtimeVersion: the Triton image tag (e.g. 24.12-py3); the ONNX graph must "
                                 "be validated under that release's ONNX Runtime (fdkd's table, or "
                                 "--target-onnxruntime)"),
                  model_name: str | None = typer.Option(None, "--name", help="Model name (default: the run's)"),
                  allow_unvalidated: bool = typer.Option(False, "--allow-unvalidated",
                                                         help="Also export artifacts that failed or lack validation"),
                  target_int8_kernels: str | None = typer.Option(
                      None, help="INT8 kernel family of the Triton host's CPU: x86 | x86-vnni | arm | arm-dotprod "
                                 "(default: this CPU's)"),
                  target_onnxruntime: str | None = typer.Option(
                      None, help="ONNX Runtime version of the Triton release (default: the installed one)")):
    """Write a Triton model repository (ONNX + validated TensorRT plans) and a KServe InferenceService."""
    from fdkd.pipeline.triton_repo import ISVC, REPOSITORY, NotExportable, export_triton

    try:
        summary = export_triton(run_dir, out, onnx=onnx, max_batch=max_batch, max_queue_delay_ms=max_queue_delay_ms,
                                onnx_device=onnx_device, storage_uri=storage_uri, runtime_version=runtime_version,
                                name=model_name, allow_unvalidated=allow_unvalidated,
                                target_int8_kernels=target_int8_kernels, target_onnxruntime=target_onnxruntime)
    except NotExportable as e:
        _fail(str(e), 1)
    for w in summary["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    for m in summary["models"]:
        console.print(f"[green]{m['model']}[/] {m['platform']} <- {m['artifact']} ({m['validation']})", highlight=False)
    for m in summary["left_out"]:
        console.print(f"[yellow]left out[/] {m['artifact']}: {escape(m['reason'])}", highlight=False)
    repo = out / REPOSITORY
    console.print(f"\nTriton:  docker run --rm -p8000:8000 -v {repo.resolve()}:/models nvcr.io/nvidia/tritonserver:"
                  f"<tag>-py3 tritonserver --model-repository=/models", highlight=False)
    console.print(f"KServe:  copy {repo} to {summary['storage_uri']}, then kubectl apply -f {out / ISVC}",
                  highlight=False)
_stage_command("calibrate", "Draw the class-stratified calibration set (calib.npz) from the training split.")
_stage_command("quantize", "FP16 and INT8 Q/DQ graphs (TensorRT-legal per calibration method, plus a CPU variant).")
_stage_command("build", "Build TensorRT engines on this machine's GPU (exits 1 where TensorRT or a GPU is missing).")


@app.command()
@handles_errors
def validate(config: Path | None = ConfigOpt, sets: list[str] = SetOpt, name: str | None = NameOpt,
             sign_key: Path | None = typer.Option(None, "--sign-key", help="Ed25519 private key (PEM): sign the "
                                                  "run's manifest and validation.json when validation passes")):
    """Validate the teacher, student.pt and every artifact on the test split against their gates."""
    from fdkd.pipeline.validate import ValidationFailed

    if sign_key is not None:  # a bad key fails now, not after the validation ran
        from fdkd.serving.signature import load_private_key

        load_private_key(sign_key)
    cfg = _config(config, sets, name=name)
    try:
        _run_to(cfg, "validate", ("validate",))
    except ValidationFailed as e:
        _print_report(cfg.run_dir)
        if sign_key is not None:
            console.print("[yellow]not signed:[/] validation failed", highlight=False)
        _fail(str(e), 1)
    _print_report(cfg.run_dir)
    if sign_key is not None:
        _sign(cfg.run_dir, sign_key)


def _sign(run_dir: Path, key: Path) -> None:
    from fdkd.serving.signature import UntrustedRun, sign_run

    try:
        doc = sign_run(run_dir, key)
    except UntrustedRun as e:
        _fail(str(e))
    console.print(f"[green]signed[/] {run_dir / 'signature.json'} (key {doc['public_key_fingerprint'][:23]}, "
                  f"manifest {doc['payload']['files']['manifest.json'][:12]}, validation "
                  f"{doc['payload']['files']['validation.json'][:12]})", highlight=False)


@app.command()
@handles_errors
def sign(run_dir: Path = typer.Argument(..., help="A finished run directory (manifest.json + validation.json)"),
         key: Path = typer.Option(..., "--key", help="Ed25519 private key, PEM (openssl genpkey -algorithm ed25519)")):
    """Sign a run: its manifest's and validation.json's sha256, its name and the time, into signature.json.

    `fdkd serve --trust PUB.pem` and `fdkd verify --trust PUB.pem` then accept only this run as signed."""
    if not run_dir.is_dir():
        _fail(f"run directory {run_dir} does not exist")
    _sign(run_dir, key)


@app.command("run")
@handles_errors
def run_all(config: Path | None = typer.Argument(None, help="Run config YAML (default: built-in avdigits)"),
            sets: list[str] = SetOpt, name: str | None = NameOpt,
            force: list[str] = typer.Option([], "--force", help="Redo this stage even if up to date (repeatable)"),
            strict: bool = typer.Option(False, "--strict", help="Exit 1 when any artifact fails its gate (default: "
                                                                "only when student.onnx does; the rest ships)")):
    """Run every stage into runs/<name>/, resuming where a previous run stopped.

    Exit 0 when student.onnx and at least one artifact per target passed (a graph that failed is reported and never
    served); exit 1 when student.onnx fails, or with --strict when anything fails."""
    from fdkd.pipeline.validate import ValidationFailed

    cfg = _config(config, sets, name=name)
    try:
        _run_to(cfg, None, tuple(force))
    except ValidationFailed as e:
        _print_report(cfg.run_dir)
        _fail(str(e), 1)
    _print_report(cfg.run_dir)
    console.print(f"\nrun directory: {cfg.run_dir}  (manifest.json, report.md)", highlight=False)
    result = json.loads((cfg.run_dir / "validation.json").read_text())
    for w in result.get("warnings", []):  # a test split too small for its gates to decide at a point's resolution
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    line, code = run_verdict(result, strict)
    console.print(("[green]" if code == 0 else "[red]") + escape(line) + "[/]", highlight=False)
    if code:
        raise typer.Exit(code)
    console.print("serve the validated student with:  [bold]" + _serve_hint(cfg.run_dir) + "[/]", highlight=False)


def run_verdict(result: dict, strict: bool = False) -> tuple[str, int]:
    """The run's last word: one line and its exit status (1 only for --strict with a failed artifact; a failed
    student.onnx raised before this)."""
    failed = result.get("failed", [])
    targets = result.get("targets", {})
    ships = "; ".join(f"{t}: {', '.join(n)}" for t, n in targets.items() if n)
    if not failed:
        return f"run passed: every artifact passed its gate; ships {ships}", 0
    text = f"run shipped what passed ({ships}); failed, never served: {', '.join(failed)} (report.md says why)"
    return ("--strict: " + text, 1) if strict else (text, 0)


@app.command()
def serve(run_dir: Path = typer.Argument(..., help="A run directory produced by `fdkd run`"),
          host: str | None = typer.Option(None, help="Bind address (default 127.0.0.1)"),
          port: int | None = typer.Option(None, help="Port (default 8000)"),
          artifact: str | None = typer.Option(None, help="Artifact file to serve (default: auto)"),
          engine_dir: Path | None = typer.Option(None, help="Folder of engines built on this machine"),
          max_batch: int | None = typer.Option(None, help="Rows per batch at most"),
          max_queue: int | None = typer.Option(None, help="Queued requests at most; beyond: 503"),
          max_queue_delay_ms: float | None = typer.Option(None, help="Wait for more rows this long (default 0)"),
          drain_seconds: float | None = typer.Option(None, help="SIGTERM: finish in-flight work within this"),
          allow_unvalidated: bool = typer.Option(False, "--allow-unvalidated",
                                                 help="Serve even if the artifact failed its validation gate"),
          threads: int | None = typer.Option(None, help="ONNX Runtime intra-op threads"),
          http: str | None = typer.Option(None, help="HTTP server: uvicorn (default; drain on SIGTERM) or granian "
                                                     "(faster under load)"),
          workers: int | None = typer.Option(None, help="With --http granian: processes sharing the port"),
          nonfinite_inputs: str | None = typer.Option(None, help="NaN/Inf input values: reject (default, 400) or "
                                                                 "accept (as Triton)"),
          trust: Path | None = typer.Option(None, "--trust", envvar="FDKD_TRUST",
                                            help="Ed25519 public key (PEM): serve only a run it signed"),
          insecure_no_api_key: bool = typer.Option(False, "--insecure-no-api-key",
                                                   help="Serve off loopback (e.g. --host 0.0.0.0) without an API "
                                                        "key; without this flag a key is required there")):
    """Serve a validated student over HTTP (KServe/Triton V2 protocol + /v1/classify). No torch needed.

    Settings also come from FDKD_SERVE_* environment variables (FDKD_SERVE_API_KEY for the key, required when
    --host is not a loopback address unless --insecure-no-api-key).
    """
    from pydantic import ValidationError

    try:
        from fdkd.serving.server import serve as run_server
        from fdkd.serving.settings import OPT_OUT_FLAG, ServeSettings, is_loopback
    except ImportError as e:
        _fail(f"fdkd serve needs the serve extra ({e.name} is missing): pip install 'fdkd[serve]'")

    flags = {"run_dir": run_dir, "host": host, "port": port, "artifact": artifact, "engine_dir": engine_dir,
             "max_batch": max_batch, "max_queue": max_queue, "max_queue_delay_ms": max_queue_delay_ms,
             "drain_seconds": drain_seconds, "threads": threads, "http": http, "nonfinite_inputs": nonfinite_inputs,
             "workers": workers, "trust": trust}
    if allow_unvalidated:
        flags["allow_unvalidated"] = True
    if insecure_no_api_key:
        flags["insecure_no_api_key"] = True
    try:
        settings = ServeSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as e:
        _fail("; ".join((f"{'.'.join(map(str, x['loc']))}: " if x["loc"] else "")
                        + x["msg"].removeprefix("Value error, ") for x in e.errors()))
    if not run_dir.is_dir():
        _fail(f"run directory {run_dir} does not exist")
    if settings.trust is not None:  # an unusable key is a usage error now, not a server that is never ready
        from fdkd.serving.signature import BadKey, load_public_key

        try:
            load_public_key(settings.trust)
        except BadKey as e:
            _fail(str(e))
    if settings.allow_unvalidated:
        console.print("[yellow]--allow-unvalidated: an artifact that failed its gate may be served[/]")
    if settings.api_key is None and not is_loopback(settings.host):
        console.print(f"[yellow]{OPT_OUT_FLAG}: serving on {escape(settings.host)} without an API key; anyone who "
                      "reaches this port can use the model[/]", highlight=False)
    run_server(settings)


@app.command()
@handles_errors
def engine(run_dir: Path = typer.Argument(..., help="A run directory produced by `fdkd run`"),
           out: Path = typer.Option(..., help="Engine folder (a volume keyed by GPU and TensorRT version)"),
           precision: str = typer.Option("fp16", help="fp32 | fp16 | int8"),
           int8_method: str | None = typer.Option(None, help="Which INT8 Q/DQ graph to build (default: the "
                                                  "one the run's INT8 gate search passed)"),
           dataset: Path | None = typer.Option(None, help="The run's dataset where it is now, if it moved (default: "
                                               "the path in the run's manifest)")):
    """Build a TensorRT engine from a run's ONNX on this machine (containers: first start), then gate it on the
    run's test set into validation.json beside it (the server serves an engine only on its own entry). The test
    rows are re-read from the run's dataset and checked against their recorded hashes. No torch."""
    from fdkd import artifacts
    from fdkd.pipeline.build import BuildUnavailable, build_engine
    from fdkd.pipeline.config import BuildConfig
    from fdkd.pipeline.validate import ValidationFailed, gate_text, validate_engine

    manifest_path = run_dir / artifacts.MANIFEST
    if not manifest_path.is_file():
        _fail(f"{manifest_path} not found: not a run directory of `fdkd run`")
    # the run's build config (batch profile, workspace, INT8 graph), as validate_engine takes the run's gates
    bcfg = BuildConfig.model_validate(json.loads(manifest_path.read_text())["config"]["build"])
    if int8_method is None:  # the graph the run's INT8 gate search passed (int8_search.json), as the build stage
        from fdkd.pipeline.search_record import build_source

        int8_graph = build_source(run_dir, bcfg.int8_method)
        if int8_graph is None and precision == "int8":
            _fail("no INT8 graph of this run passed its gate search (int8_search.json, report.md): no INT8 engine; "
                  "--int8-method builds one of the plain graphs anyway", 1)
    else:
        int8_graph = f"student.int8.{int8_method}.onnx"
    sources = {"fp32": "student.onnx", "fp16": "student.fp16.onnx", "int8": int8_graph}
    if precision not in sources:
        _fail(f"--precision must be one of {sorted(sources)}, got {precision!r}")
    out.mkdir(parents=True, exist_ok=True)
    try:
        plan = build_engine(run_dir / sources[precision], precision, out, bcfg)
    except BuildUnavailable as e:
        _fail(str(e), 1)
    console.print(f"[green]engine[/] {plan}", highlight=False)
    try:
        entry = validate_engine(run_dir, plan, dataset)
    except ValidationFailed as e:
        _fail(str(e), 1)
    console.print(f"[green]validated[/] {plan.name}: {escape(gate_text(entry['gate']))}", highlight=False)


def _serve_hint(run_dir: Path) -> str:
    """The command that serves ``run_dir``, as it runs from here: ``fdkd`` when that name on PATH is this
    installation's console script; else that script by its path (a virtualenv that is not activated, the README's
    `.venv/bin/fdkd`); else this interpreter with ``-m fdkd`` (no console script: a bare checkout)."""
    import os
    import shlex
    import shutil
    import sys

    def shown(p: Path) -> str:
        try:  # relative where the user stands (.venv/bin/fdkd), absolute elsewhere
            return shlex.quote(os.path.relpath(p) if not os.path.relpath(p).startswith("..") else str(p))
        except ValueError:  # another drive (Windows)
            return shlex.quote(str(p))

    bin_dir = Path(sys.executable).parent  # console scripts sit beside the interpreter (a venv's bin/), unresolved
    script = next((bin_dir / n for n in ("fdkd", "fdkd.exe") if (bin_dir / n).is_file()), None)
    on_path = shutil.which("fdkd")
    if script is not None and on_path is not None and Path(on_path).resolve() == script.resolve():
        cmd = "fdkd"
    elif script is not None:
        cmd = shown(script)
    else:
        cmd = f"{shown(Path(sys.executable))} -m fdkd"
    return f"{cmd} serve {shlex.quote(str(run_dir))}"


def _print_report(run_dir: Path) -> None:
    from fdkd.pipeline.report import candidates_table, headline, labels_line, selection_text, summary_table

    path = run_dir / "validation.json"
    if path.exists():
        result = json.loads(path.read_text())
        labels = (result.get("distill") or {}).get("labels")
        if labels and (labels["train_unlabelled"] or labels.get("label_noise")):
            console.print(escape(labels_line(labels)), highlight=False)
        auto = (result.get("distill") or {}).get("auto")
        if auto:
            console.print(candidates_table(auto), highlight=False)
            console.print(escape(selection_text(auto)[-2]), highlight=False)
        console.print(summary_table(result), highlight=False)
        for m in result.get("not_validated", []):
            console.print(f"[yellow]not validated:[/] {escape(m['name'])}: {escape(m['reason'])}", highlight=False)
        color = "green" if result["passed"] else "red"
        console.print(f"validation [{color}]{escape(headline(result))}[/]; "
                      f"plots and details in {run_dir / 'report.md'}", highlight=False)


@app.command()
@handles_errors
def verify(run_dir: Path = typer.Argument(..., help="A run directory with manifest.json"),
           trust: Path | None = typer.Option(None, "--trust", envvar="FDKD_TRUST",
                                             help="Ed25519 public key (PEM): also require the run's signature by it"),
           artifact: str = typer.Option("auto", help="The artifact `fdkd serve --artifact` would be given"),
           threads: int | None = typer.Option(None, help="The --threads `fdkd serve` would be given"),
           rows: bool = typer.Option(False, "--rows", help="Also re-read the test rows from the run's dataset and "
                                     "check each row's input hash (validation.testset.npz)"),
           dataset: Path | None = typer.Option(None, help="With --rows: the run's dataset where it is now, if it "
                                               "moved")):
    """Check a run directory as `fdkd serve` does before it becomes ready, and every artifact's hash.

    Every artifact against the sha256 in the manifest; then the server's own check (fdkd.serving.model.load_model,
    the same function): the artifact it would pick, its hash, a validation.json entry for that very file (not a
    stale one, e.g. after a re-export), judged in the mode it would run in here, with a passed gate, the runtime
    loading it in that mode; with --trust the run's signature; with --rows the test rows the run was validated on,
    re-read from its dataset in chunks, each against its recorded input hash. Exit 1 on any problem."""
    from fdkd.pipeline.run_manifest import RunManifest
    from fdkd.serving.model import NotServable, load_model
    from fdkd.serving.validated_mode import mode_text

    if not (run_dir / "manifest.json").exists():
        _fail(f"{run_dir} has no manifest.json")
    problems = []
    trusted = True
    if trust is not None:
        from fdkd.serving.signature import BadKey, UntrustedRun, verify_run

        try:
            payload = verify_run(run_dir, trust)
        except BadKey as e:
            _fail(str(e))
        except UntrustedRun as e:
            problems.append(f"not trusted: {e}")
            trusted = False
    problems += RunManifest.load(run_dir).problems()
    checked_rows = None
    if rows or dataset is not None:
        from fdkd.pipeline.validate import open_testset

        try:
            features = open_testset(run_dir, dataset)[3]
            checked_rows = sum(hi - lo for lo, hi, _ in features)
        except (ValueError, OSError) as e:
            problems.append(f"test rows: {e}")
    served = None
    if trusted:  # (an untrusted run is refused for that reason first: said above)
        try:
            served = load_model(run_dir, artifact, threads=threads, trust=trust)
        except NotServable as e:
            problems.append(f"`fdkd serve` would refuse this run (live, never ready): {e}")
    for p in problems:
        console.print(f"[red]{escape(p)}[/]", highlight=False)
    if problems:
        raise typer.Exit(1)
    if trust is not None:
        console.print(f"[green]ok[/] signed by the trusted key {trust} at {payload['signed_at']}", highlight=False)
    console.print(f"[green]ok[/] every artifact in {run_dir} matches its manifest hash", highlight=False)
    if checked_rows is not None:
        console.print(f"[green]ok[/] the {checked_rows} test rows re-read from the dataset hash as validated",
                      highlight=False)
    console.print(f"[green]ok[/] `fdkd serve` would serve {served.artifact} ({served.sha256[:12]}), validated in the "
                  f"mode it runs in here {escape('[' + mode_text(served.mode) + ']')}", highlight=False)


@app.command()
@handles_errors
def analyze(config: Path | None = ConfigOpt, sets: list[str] = SetOpt, name: str | None = NameOpt,
            student: Path | None = typer.Option(None, help="Student checkpoint to analyze (default: the run's)")):
    """Per-band teacher/student feature similarity (CKA, cosine), DC removed, with a permutation control."""
    from fdkd.pipeline import analyze as stage
    from fdkd.pipeline import data

    cfg = _config(config, sets, name=name)
    result = stage.run(cfg, data.load(cfg), cfg.run_dir, student)
    from rich.table import Table

    table = Table(title=f"teacher vs student ({result['method']}), test split; projected={result['projected']}")
    for col in ("cut/D", "band", "control", "CKA", "cosine"):
        table.add_column(col)
    for r in result["rows"]:
        cos = "-" if r["cosine"] is None else f"{r['cosine']:.3f}"
        table.add_row(f"{r['cut_fraction']:.3f}", r["band"], r["control"], f"{r['cka']:.3f}", cos)
    console.print(table)
    console.print(f"wrote {cfg.run_dir / 'analysis.json'} and {cfg.run_dir / 'analysis.png'}", highlight=False)


@app.command("config")
@handles_errors
def show_config(config: Path | None = ConfigOpt, sets: list[str] = SetOpt):
    """Print the resolved configuration (defaults + file + overrides)."""
    from fdkd.pipeline.config import dump_config

    typer.echo(dump_config(_config(config, sets)))


if __name__ == "__main__":
    app()
