"""Run configuration: one YAML file per run, validated by pydantic, with ``--set a.b=c`` overrides.

Unknown keys and wrong types are errors that name the key (``ConfigError``). The resolved
configuration is written next to every artifact (``save_config``) and embedded in checkpoints.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Modality = Literal["image", "audio"]
MethodName = Literal["none", "self-training", "pseudo", "kd", "feat", "dkd", "dist", "fd"]
DistillMethod = Literal["auto", "none", "self-training", "pseudo", "kd", "feat", "dkd", "dist", "fd"]


class ConfigError(ValueError):
    """A configuration problem; the message names the key or file at fault."""


def set_path(tree: dict, key: str, value) -> None:
    """Set ``tree[a][b][c] = value`` for ``key`` "a.b.c", creating sections on the way."""
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"empty key segment in {key!r}")
    node = tree
    for i, p in enumerate(parts[:-1]):
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _ordered(v):
    """A (low, high) range."""
    if v[0] > v[1]:
        raise ValueError(f"range must be (low, high), got {v}")
    return v


def _fractions(v):
    """train/val/test split fractions."""
    if min(v) <= 0 or abs(sum(v) - 1) > 1e-6:
        raise ValueError(f"train/val/test fractions must be positive and sum to 1, got {v}")
    return v


def _accents(v):
    if not v:
        raise ValueError("accents must name at least one eSpeak NG accent")
    return v


class _SpokenDigitsConfig(_Strict):
    """What the built-in sources share: eSpeak NG voices, clip gain and noise, the split."""

    accents: tuple[str, ...] = ("en-us", "en", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
    pitch: tuple[int, int] = (20, 80)
    rate: tuple[int, int] = (130, 260)
    gain_db: tuple[float, float] = (-12.0, 0.0)
    snr_db: tuple[float, float] = (-5.0, 20.0)  # avdigits: drawn uniformly; avblend: worst .. best quality
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)

    _ranges = field_validator("pitch", "rate", "gain_db", "snr_db")(staticmethod(_ordered))
    _split = field_validator("split_fractions")(staticmethod(_fractions))
    _voices = field_validator("accents")(staticmethod(_accents))


class AVDigitsConfig(_SpokenDigitsConfig):
    """Built-in paired data: real digit images + eSpeak NG spoken digit words."""

    preset: Literal["avdigits", "avmnist"] = "avdigits"
    seed: int = 0
    clips_per_image: int = Field(1, ge=1)
    max_images: int | None = Field(None, ge=10)
    # whole accents held out of train/val/test: each test image gets one more clip in one of them,
    # in split 3 (test_unseen_accent); () builds no such split
    unseen_accents: tuple[str, ...] = ("en-gb-scotland", "en-029")
    # the chance that a training clip is spoken with a pronunciation variant (avdigits.PRONUNCIATION_RULES, e.g.
    # "eight" with a monophthong): accents differ in more than voice; validation and test clips never are
    pronunciation_variants: float = Field(0.0, ge=0, le=1)
    # extra training clips per training image, each re-pronounced, beside (not instead of) its plain clips
    pronunciation_variant_clips: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _accents_disjoint(self):
        both = sorted(set(self.accents) & set(self.unseen_accents))
        if both:
            raise ValueError(f"unseen_accents must not also be in accents: {both}")
        return self


class AVBlendConfig(_SpokenDigitsConfig):
    """Instance-paired built-in data (``fdkd data avblend``): one blended event in both modalities.

    Each pair: a real 8x8 digit blended toward an image of a second class with weight w in
    [0, w_max), and the first class's spoken word mixed with the second class's word at the same w,
    one quality draw setting both the image noise and the audio SNR; label = the first class.
    ``shared`` is the fraction of pairs whose second class, w and quality are the same in both
    modalities; the others draw the audio's independently (at 0: class-level pairing).
    """

    seed: int = 0
    pairs: int = Field(3000, ge=30)  # train/val/test pairs together, split by split_fractions
    shared: float = Field(1.0, ge=0, le=1)
    w_max: float = Field(0.45, gt=0, le=0.5)
    image_noise: float = Field(0.25, ge=0)  # pixel noise std / max value at the worst quality


class ManifestDataConfig(_Strict):
    """User data: a CSV/JSONL manifest of paired files (see ``fdkd data manifest``)."""

    path: Path
    teacher_modality: Modality = "image"
    image_size: tuple[int, int] = (32, 32)
    image_channels: Literal[1, 3] = 1
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # when the manifest has no split column
    seed: int = 0
    max_file_mb: float = Field(64.0, gt=0)  # larger files are a manifest problem, never read

    _split = field_validator("split_fractions")(staticmethod(_fractions))


class DataConfig(_Strict):
    source: Literal["avdigits", "avblend", "manifest"] = "avdigits"
    cache_dir: Path = Path("runs/data")
    # the student's training labels (pipeline/data/labels.py); the dataset file and every val/test label stay as
    # they are. labelled: the fraction of labelled training pairs that keep their label, stratified by class (at
    # least one per class), the rest become unlabelled pairs. label_noise: the fraction of the kept labels replaced
    # by another class, uniformly, stratified by class, fixed per pair. The teacher trains on the file's labels.
    labelled: float = Field(1.0, gt=0, le=1)
    label_noise: float = Field(0.0, ge=0, lt=1)
    label_seed: int | None = None  # None: the run's seed
    avdigits: AVDigitsConfig = AVDigitsConfig()
    avblend: AVBlendConfig = AVBlendConfig()
    manifest: ManifestDataConfig | None = None

    @model_validator(mode="after")
    def _manifest_given(self):
        if self.source == "manifest" and self.manifest is None:
            raise ValueError("data.source is 'manifest' but data.manifest is not set")
        return self


class ModelConfig(_Strict):
    """An encoder: ``conv`` (built in) or ``timm:<name>`` (needs the [timm] extra)."""

    arch: str = "conv"
    width: int = Field(16, ge=1)
    depth: int = Field(2, ge=1, le=6)
    # conv only: "auto" halves inputs whose short side is >= 32 (spectrograms) before the first block
    stem_stride: int | Literal["auto"] = "auto"

    def resolved_stem_stride(self, input_shape: tuple[int, ...]) -> int:
        if self.stem_stride == "auto":
            return 2 if min(input_shape[-2:]) >= 32 else 1
        return self.stem_stride

    @field_validator("stem_stride")
    @classmethod
    def _stride(cls, v):
        if v != "auto" and not 1 <= v <= 4:
            raise ValueError(f"stem_stride must be 1..4 or 'auto', got {v}")
        return v

    @field_validator("arch")
    @classmethod
    def _arch(cls, v):
        if v != "conv" and not v.startswith("timm:"):
            raise ValueError(f"arch must be 'conv' or 'timm:<name>', got {v!r}")
        return v


class OptimConfig(_Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    final_lr: float = Field(1e-4, ge=0)
    poly_power: float = 0.9
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    # validate, select and ship an exponential moving average of the weights (pipeline/ema.py); None: the weights
    ema_decay: float | None = Field(None, ge=0, lt=1)


class TeacherConfig(_Strict):
    modality: Modality = "image"
    model: ModelConfig = ModelConfig(width=64, depth=3)
    optim: OptimConfig = OptimConfig(epochs=15)
    checkpoint: Path | None = None  # load instead of training: fdkd checkpoint or TorchScript
    checkpoint_arch: ModelConfig | None = None  # for a bare state dict: the architecture it fits


class KDConfig(_Strict):
    alpha: float = Field(1.0, ge=0)
    temperature: float = Field(4.0, gt=0)


class FeatConfig(_Strict):
    beta: float = Field(1.0, ge=0)


class DKDConfig(_Strict):
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(8.0, ge=0)
    temperature: float = Field(4.0, gt=0)
    warmup_epochs: int = Field(5, ge=0)


class DISTConfig(_Strict):
    beta: float = Field(1.0, ge=0)
    gamma: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0)


class FDConfig(_Strict):
    """FD-CMKD weights (METHOD.md): L = L_task + w_align*L_align + w_low*L_low + w_high*L_high."""

    cut: int | None = Field(None, ge=1)  # None: D // 4
    w_align: float = Field(1.0, ge=0)
    w_low: float = Field(1.0, ge=0)
    w_high: float = Field(1.0, ge=0)
    band_heads: bool = False
    w_band_heads: float = Field(1.0, ge=0)
    # ablations
    band_split: bool = True  # False: both terms and both classifiers see the whole DC-free feature
    shared_classifier: bool = True
    log_mse: bool = True  # False: plain MSE on the high band


class PseudoConfig(_Strict):
    """pseudo (supervision transfer): CE to the teacher's hard label on the unlabelled pairs where the teacher's
    softmax confidence reaches ``threshold``, averaged over the unlabelled pairs of the batch."""

    threshold: float = Field(0.9, ge=0, le=1)
    weight: float = Field(1.0, ge=0)


class SelfTrainingConfig(_Strict):
    """self-training (FixMatch-style, no teacher): CE of the student on its augmented (strong) view to its own
    hard prediction on the clean (weak) view of each unlabelled clip, where that prediction's confidence reaches
    ``threshold``. The control that says whether the teacher, rather than the unlabelled audio, earned a gain."""

    threshold: float = Field(0.95, ge=0, le=1)
    weight: float = Field(1.0, ge=0)


class LabelSmoothingConfig(_Strict):
    """Label smoothing of the task term, usable with any method (the ``none + LS`` control).

    ``epsilon: teacher`` matches the teacher's mean soft-target entropy on the training split:
    the smoothed one-hot target (1 - e + e/C on the label, e/C elsewhere) gets the entropy of the
    teacher's average softmax(z_t / temperature) (``fdkd.pipeline.controls``). The temperature defaults to
    ``kd.temperature``: the soft targets KD distills (at T = 1 a well-trained teacher is nearly one-hot
    on its training rows and the matched strength is ~0).
    """

    epsilon: float | Literal["teacher"] = 0.0
    temperature: float | None = Field(None, gt=0)  # None: distill.kd.temperature

    @field_validator("epsilon")
    @classmethod
    def _eps(cls, v):
        if v != "teacher" and not 0 <= v < 1:
            raise ValueError(f"epsilon must be in [0, 1) or 'teacher', got {v}")
        return v


class AutoCandidate(_Strict):
    """One candidate of ``method: auto``: a method plus overrides inside ``distill`` (e.g. ``fd.w_low: 100``)."""

    name: str
    method: MethodName
    set: dict[str, Any] = {}

    @field_validator("set")
    @classmethod
    def _keys(cls, v):
        for key in v:
            if key.split(".")[0] in ("method", "auto", "bidirectional", "student", "optim", "teacher_cache",
                                     "grad_norm_every", "augment"):
                raise ValueError(f"a candidate cannot override distill.{key}: candidates train one student "
                                 "architecture in one loop (same optimizer schedule, same batches)")
        return v


class AutoConfig(_Strict):
    """``method: auto``: train every candidate on one shared teacher cache and ship the best by validation
    accuracy of the student's own head, only where it beats the ``none`` candidate (training alone) by more than
    ``margin_se`` paired standard errors (``fdkd.pipeline.auto``). The validation split is halved, stratified: one half
    picks each candidate's epoch, the other judges the candidates, so one set of rows never does both."""

    margin_se: float = Field(2.0, ge=0)

    candidates: tuple[AutoCandidate, ...] = (
        AutoCandidate(name="none", method="none"),
        AutoCandidate(name="kd", method="kd"),
        AutoCandidate(name="fd", method="fd"),
        AutoCandidate(name="fd-w100", method="fd", set={"fd.w_low": 100, "fd.w_high": 100}),
    )

    @field_validator("candidates")
    @classmethod
    def _baseline(cls, v):
        names = [c.name for c in v]
        if len(set(names)) != len(names):
            raise ValueError(f"candidate names must be unique, got {names}")
        if not any(c.method == "none" and not c.set for c in v):
            raise ValueError("candidates must include a plain `none` candidate (method: none, no set): "
                             "the training-alone baseline every other candidate has to beat")
        return v


class AudioAugmentConfig(_Strict):
    """On-the-fly augmentation of an audio student's training inputs (pipeline/augment.py).

    Each ``*_p`` is the chance that a clip gets that transform; ranges are (low, high). Never
    applied to validation/test inputs or to the teacher.
    """

    enabled: bool = True
    # speed, pitch and the frequency warp are wide enough for new accents (docs/results.md section 6: at
    # 0.9..1.1, +-2 semitones at p 0.5 and 1.5 bins the student lost 12 points on unseen eSpeak accents)
    speed: tuple[float, float] = (0.85, 1.15)  # resampling factor (tempo and pitch together)
    speed_p: float = Field(0.5, ge=0, le=1)
    pitch_semitones: tuple[float, float] = (-4.0, 4.0)  # frequency-axis scaling, duration kept
    pitch_p: float = Field(0.8, ge=0, le=1)
    warp_p: float = Field(0.5, ge=0, le=1)  # smooth, uneven stretching of the time and mel axes
    time_warp_frames: float = Field(5.0, ge=0, le=12)
    freq_warp_bins: float = Field(3.0, ge=0, le=4)
    gain_db: tuple[float, float] = (-6.0, 6.0)
    gain_p: float = Field(0.5, ge=0, le=1)
    noise_snr_db: tuple[float, float] = (5.0, 30.0)
    noise_tilt: tuple[float, float] = (0.0, 2.0)  # noise power ~ f**-tilt: 0 white, 1 pink, 2 brown
    noise_p: float = Field(0.25, ge=0, le=1)
    time_masks: int = Field(1, ge=0)
    time_mask_max: int = Field(10, ge=0)  # frames (10 ms each)
    freq_masks: int = Field(1, ge=0)
    freq_mask_max: int = Field(4, ge=0)  # mel bins

    _ranges = field_validator("speed", "pitch_semitones", "gain_db", "noise_snr_db", "noise_tilt")(
        staticmethod(_ordered))

    @field_validator("speed")
    @classmethod
    def _positive(cls, v):
        if v[0] <= 0:
            raise ValueError(f"speed factors must be positive, got {v}")
        return v


class DistillConfig(_Strict):
    method: DistillMethod = "auto"  # auto: the best of auto.candidates on validation (see AutoConfig)
    bidirectional: bool = False
    teacher_cache: bool = True  # frozen, un-augmented teacher: compute its outputs once
    # controls (fdkd.pipeline.controls), usable with any method
    label_smoothing: LabelSmoothingConfig = LabelSmoothingConfig()
    teacher_shuffle: bool = False  # each training pair gets the teacher outputs of another pair of its class
    # which pooled features the objectives compare (built-in conv encoders): "post" = what feeds the head;
    # "pre" = the last block's output before its ReLU, pooled (the reference code's tap)
    feature_tap: Literal["post", "pre"] = "post"
    auto: AutoConfig = AutoConfig()
    grad_norm_every: int = Field(10, ge=0)  # 0: never measure per-term gradient norms
    student: ModelConfig = ModelConfig(width=16, depth=3)
    optim: OptimConfig = OptimConfig()
    kd: KDConfig = KDConfig()
    feat: FeatConfig = FeatConfig()
    dkd: DKDConfig = DKDConfig()
    dist: DISTConfig = DISTConfig()
    fd: FDConfig = FDConfig()
    pseudo: PseudoConfig = PseudoConfig()
    self_training: SelfTrainingConfig = SelfTrainingConfig()
    augment: AudioAugmentConfig = AudioAugmentConfig()  # audio students only

    @model_validator(mode="after")
    def _candidates_valid(self):
        if self.method == "auto":
            if self.label_smoothing.epsilon or self.teacher_shuffle:
                raise ValueError("method auto with distill.label_smoothing.epsilon or distill.teacher_shuffle set "
                                 "would apply the control to every candidate, the training-alone baseline too: "
                                 "put controls in a candidate's `set` (e.g. set: {teacher_shuffle: true}), or "
                                 "pick one `--method`")
            for c in self.auto.candidates:
                self.candidate(c)
        return self

    def candidate(self, cand: AutoCandidate) -> DistillConfig:
        """This config as ``cand`` trains it: its method and overrides applied (``auto`` itself dropped)."""
        tree = self.model_dump(mode="json", by_alias=True)
        tree["method"] = cand.method
        for key, value in cand.set.items():
            set_path(tree, key, value)
        tree.pop("auto")
        try:
            return DistillConfig.model_validate(tree)
        except ValidationError as e:
            detail = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            raise ValueError(f"auto candidate {cand.name!r}: {detail}") from None

    def runs(self) -> list[tuple[str, DistillConfig]]:
        """(name, resolved config) of every student this config trains per direction."""
        if self.method == "auto":
            return [(c.name, self.candidate(c)) for c in self.auto.candidates]
        return [(self.method, self)]


class ExportConfig(_Strict):
    exporter: Literal["dynamo", "torchscript"] = "dynamo"  # torch.onnx.export(dynamo=...), named explicitly
    opset: int = Field(18, ge=17, le=20)
    parity_atol: float = Field(1e-4, gt=0)  # max |logit difference| ONNX Runtime vs PyTorch, FP32
    parity_batches: tuple[int, ...] = (1, 7, 64)


CalibMethod = Literal["minmax", "entropy", "percentile"]


class QuantizeConfig(_Strict):
    calib_samples: int = Field(512, ge=10)
    calib_methods: tuple[CalibMethod, ...] = ("minmax", "entropy", "percentile")
    percentile: float = Field(99.999, gt=90, le=100)
    fp16: bool = True
    fp16_keep_fp32: tuple[str, ...] = ()  # ONNX node names kept in FP32 in the FP16 graph
    exclude: tuple[str, ...] = ()  # ONNX node names kept in float in the INT8 graphs
    sensitivity_top: int = Field(5, ge=1)


class BuildConfig(_Strict):
    precisions: tuple[Literal["fp32", "fp16", "int8"], ...] = ("fp16", "int8")
    int8_method: CalibMethod = "entropy"  # which INT8 graph becomes the engine
    min_batch: int = Field(1, ge=1)
    opt_batch: int = Field(16, ge=1)
    max_batch: int = Field(64, ge=1)
    workspace_mb: int = Field(1024, ge=16)

    @model_validator(mode="after")
    def _profile(self):
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError("build batch profile needs min_batch <= opt_batch <= max_batch")
        return self


class GateConfig(_Strict):
    """Validation gates per precision: an artifact that fails one is not shipped."""

    fp32_max_abs_logit: float = Field(1e-4, gt=0)  # and top-1 identical to student.pt on every row
    fp16_max_acc_drop_pt: float = Field(0.3, ge=0)
    int8_max_acc_drop_pt: float = Field(1.0, ge=0)
    # top-1 agreement with student.pt, percent of test rows (catches flips that cancel in accuracy)
    fp16_min_agree_pct: float = Field(99.0, ge=0, le=100)
    int8_min_agree_pct: float = Field(97.0, ge=0, le=100)


class ValidateConfig(_Strict):
    gates: GateConfig = GateConfig()
    latency_batch: int = Field(64, ge=1)
    latency_repeats: int = Field(5, ge=1)
    # ONNX Runtime intra-op threads of the runtimes judged (the mode the server must match); None: the
    # top-level ``threads``. Its own key so another count re-validates without retraining.
    threads: int | None = Field(None, ge=1)


class AccelConfig(_Strict):
    """Device and distribution (pipeline/accel.py). ``nproc`` > 1 launches distillation through torchrun."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # CUDA only
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto: on for CUDA and x86 CPUs
    compile: bool = False  # torch.compile the student (opt-in)
    band_split: Literal["auto", "matmul", "fft"] = "auto"  # FD band split form; auto: the faster here
    nproc: int = Field(1, ge=1)  # processes on this node for `fdkd distill` (torchrun --nproc-per-node)
    torchrun_args: tuple[str, ...] = ()  # e.g. ["--nnodes=2", "--node-rank=0", "--rdzv-endpoint=host:29500"]

    @field_validator("amp", "channels_last", mode="before")
    @classmethod
    def _yaml_switch(cls, v):
        """YAML reads a bare on/off (``--set accel.channels_last=on``) as true/false: take those as "on"/"off"."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class RunConfig(_Strict):
    name: str = "avdigits"
    seed: int = 0
    runs_dir: Path = Path("runs")
    threads: int | None = Field(None, ge=1)
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    distill: DistillConfig = DistillConfig()
    export: ExportConfig = ExportConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    build: BuildConfig = BuildConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    accel: AccelConfig = AccelConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not v or "/" in v or v.startswith("."):
            raise ValueError(f"run name must be a plain directory name, got {v!r}")
        return v

    @model_validator(mode="after")
    def _manifest_teacher(self):
        m = self.data.manifest
        if self.data.source == "manifest" and m is not None and m.teacher_modality != self.teacher.modality:
            raise ValueError(f"teacher.modality is {self.teacher.modality!r} but data.manifest.teacher_modality is "
                             f"{m.teacher_modality!r}; set both to the modality of the manifest's teacher column")
        return self

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name

    @property
    def student_modality(self) -> Modality:
        return "audio" if self.teacher.modality == "image" else "image"


def default_config_path() -> Path:
    return Path(str(resources.files("fdkd.pipeline") / "configs" / "avdigits.yaml"))


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def apply_override(tree: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {e}") from None
    try:
        set_path(tree, key, value)
    except ConfigError as e:
        raise ConfigError(f"--set {e}") from None


def load_config(path: Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read ``path`` (default: the built-in avdigits config), apply overrides, validate."""
    path = Path(path) if path is not None else default_config_path()
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for o in overrides:
        apply_override(tree, o)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(e, str(path))) from None


def config_to_dict(cfg: BaseModel) -> dict:
    return cfg.model_dump(mode="json", by_alias=True)


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
