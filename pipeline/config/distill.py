"""Settings of the distill stage (``distill:``, read by ``fdkd.pipeline.distill``): the method, each method's
weights (in ``distill.method`` order, each beside the names of its objective and loss modules), the controls, the
``auto`` candidates, the student, its optimizer and its audio augmentation.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from fdkd.pipeline.config.base import _ordered, _Strict, set_path
from fdkd.pipeline.config.model import ModelConfig
from fdkd.pipeline.config.train import OptimConfig

MethodName = Literal["none", "self-training", "pseudo", "kd", "feat", "dkd", "dist", "fd"]
DistillMethod = Literal["auto", "none", "self-training", "pseudo", "kd", "feat", "dkd", "dist", "fd"]


# ---- each method's settings, in distill.method order (none has none) ----

# self-training (distill.self_training): objective fdkd.pipeline.objectives.pseudo, loss fdkd.pipeline.losses.pseudo
class SelfTrainingConfig(_Strict):
    """self-training (FixMatch-style, no teacher): CE of the student on its augmented (strong) view to its own
    hard prediction on the clean (weak) view of each unlabelled clip, where that prediction's confidence reaches
    ``threshold``. The control that says whether the teacher, rather than the unlabelled audio, earned a gain."""

    threshold: float = Field(0.95, ge=0, le=1)
    weight: float = Field(1.0, ge=0)


# pseudo (distill.pseudo): objective fdkd.pipeline.objectives.pseudo, loss fdkd.pipeline.losses.pseudo
class PseudoConfig(_Strict):
    """pseudo (supervision transfer): CE to the teacher's hard label on the unlabelled pairs where the teacher's
    softmax confidence reaches ``threshold``, averaged over the unlabelled pairs of the batch."""

    threshold: float = Field(0.9, ge=0, le=1)
    weight: float = Field(1.0, ge=0)


# kd (distill.kd): objective fdkd.pipeline.objectives.kd, loss fdkd.pipeline.losses.kd
class KDConfig(_Strict):
    alpha: float = Field(1.0, ge=0)
    temperature: float = Field(4.0, gt=0)


# feat (distill.feat): objective fdkd.pipeline.objectives.feat, loss F.mse_loss (no module)
class FeatConfig(_Strict):
    beta: float = Field(1.0, ge=0)


# dkd (distill.dkd): objective fdkd.pipeline.objectives.dkd, loss fdkd.pipeline.losses.dkd
class DKDConfig(_Strict):
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(8.0, ge=0)
    temperature: float = Field(4.0, gt=0)
    warmup_epochs: int = Field(5, ge=0)


# dist (distill.dist): objective fdkd.pipeline.objectives.dist, loss fdkd.pipeline.losses.dist
class DISTConfig(_Strict):
    beta: float = Field(1.0, ge=0)
    gamma: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0)


# fd (distill.fd): objective fdkd.pipeline.objectives.fd, loss fdkd.pipeline.losses.fd
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


# ---- controls, usable with any method (fdkd.pipeline.controls) ----

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


# ---- method: auto (fdkd.pipeline.auto) ----

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


# ---- the audio student's augmentation (fdkd.pipeline.augment) ----

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


class ImageAugmentConfig(_Strict):
    """On-the-fly augmentation of an image or depth student's training inputs (pipeline/augment.py): a random
    resized crop, flips, and (RGB only) colour jitter. Off by default: the built-in image students (digits, where
    a mirror changes the class) have not been measured with it. Never applied to validation/test inputs or to the
    teacher.
    """

    enabled: bool = False
    crop_p: float = Field(0.8, ge=0, le=1)
    crop_scale: tuple[float, float] = (0.6, 1.0)  # fraction of the image's area the crop keeps
    crop_ratio: tuple[float, float] = (0.75, 1.3333)  # width / height of the crop (relative to the image's)
    hflip_p: float = Field(0.0, ge=0, le=1)  # left-right mirror: only where the data allows it (not digits, text)
    vflip_p: float = Field(0.0, ge=0, le=1)
    jitter_p: float = Field(0.8, ge=0, le=1)  # RGB only: depth and grey inputs get crops and flips alone
    brightness: float = Field(0.2, ge=0, lt=1)  # factor drawn from 1 +- this
    contrast: float = Field(0.2, ge=0, lt=1)
    saturation: float = Field(0.2, ge=0, lt=1)

    _ranges = field_validator("crop_scale", "crop_ratio")(staticmethod(_ordered))

    @field_validator("crop_scale", "crop_ratio")
    @classmethod
    def _positive(cls, v):
        if v[0] <= 0:
            raise ValueError(f"must be positive, got {v}")
        return v


class DistillConfig(_Strict):
    method: DistillMethod = "auto"  # auto: the best of auto.candidates on validation (see AutoConfig)
    bidirectional: bool = False
    teacher_cache: bool = True  # frozen, un-augmented teacher: compute its outputs once
    # controls (fdkd.pipeline.controls), usable with any method
    label_smoothing: LabelSmoothingConfig = LabelSmoothingConfig()
    teacher_shuffle: bool = False  # each training pair gets the teacher outputs of another pair of its class
    # each training pair gets the mean teacher output over the training pairs of the class the teacher predicts
    # for it (fdkd.pipeline.controls.class_prototypes): label correction kept, per-pair knowledge removed
    teacher_prototype: bool = False
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
    image_augment: ImageAugmentConfig = ImageAugmentConfig()  # image and depth students only

    @model_validator(mode="after")
    def _candidates_valid(self):
        if self.method == "auto":
            if self.label_smoothing.epsilon or self.teacher_shuffle or self.teacher_prototype:
                raise ValueError("method auto with distill.label_smoothing.epsilon, distill.teacher_shuffle or "
                                 "distill.teacher_prototype set "
                                 "would apply the control to every candidate, the training-alone baseline too: "
                                 "put controls in a candidate's `set` (e.g. set: {teacher_shuffle: true}), or "
                                 "pick one `--method`")
            for c in self.auto.candidates:
                self.candidate(c)
        if self.teacher_prototype and self.teacher_shuffle:
            raise ValueError("distill.teacher_prototype and distill.teacher_shuffle are two different controls: "
                             "set one per candidate")
        if self.teacher_prototype and not self.teacher_cache:
            raise ValueError("distill.teacher_prototype replaces the cached teacher outputs: it needs "
                             "distill.teacher_cache: true")
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
