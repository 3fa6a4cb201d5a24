"""Settings of the data stage (``data:``): the built-in paired sources, a user manifest, the student's labels.

Read by ``fdkd.pipeline.data`` (``fdkd data``), which builds or reads the paired dataset every later stage loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fdkd.pipeline.config.base import Modality, _ordered, _Strict


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


class HFColumns(_Strict):
    """Which column of a Hugging Face datasets folder is which (``fdkd.pipeline.data.hf``); unset: found by feature
    (the one Image/Audio/array column of the configured kind, ``label`` or the only ClassLabel, ``split``)."""

    teacher: str | None = None
    student: str | None = None
    label: str | None = None
    split: str | None = None  # a Dataset's split column (train/validation/test); a DatasetDict's splits are its own
    group: str | None = None  # rows sharing a value stay in one split (a Dataset without a split column)


class ManifestDataConfig(_Strict):
    """User data: a CSV/JSONL manifest of paired files (see ``fdkd data manifest``).

    The modalities name the kind each column holds (``image``, ``depth``, ``audio``, ``array``; a suffix tells two
    columns of one kind apart: ``image_small``); the files must agree. Sizes left unset (None) are the files' own
    when every file of the column agrees; when they do not, the data check names the sizes found and asks for
    the setting. A resize, crop or pad that changes the data is logged with its numbers.
    """

    path: Path  # a CSV/JSONL manifest, or a Hugging Face datasets folder (save_to_disk), mapped by ``columns``
    columns: HFColumns | None = None
    teacher_modality: Modality = "image"
    student_modality: Modality | None = None  # None: audio for an image teacher, else image
    image_size: tuple[int, int] | None = None  # (height, width) of every image and depth column; None: the files'
    student_image_size: tuple[int, int] | None = None  # the student column's own, where it differs (image -> image)
    image_channels: Literal[1, 3] | None = None  # None: 1 if every image is grey, else 3 (grey files repeated)
    sample_rate: int = Field(16000, ge=1000)  # every WAV is resampled to it (polyphase filter)
    clip_seconds: float | None = Field(None, gt=0)  # None: the clips' own length when they all agree
    depth_scale: float = Field(0.001, gt=0)  # metres per 16-bit depth level (0.001: millimetres)
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
    # Both belong to the config file's source: an override that switches data.source drops them unless it sets
    # them too (fdkd.pipeline.config.SOURCE_BOUND_KEYS).
    labelled: float = Field(1.0, gt=0, le=1)
    label_noise: float = Field(0.0, ge=0, lt=1)
    label_seed: int | None = None  # None: the run's seed
    # DataLoader processes decoding a streamed dataset's batches ahead in the training stages (0: in the training
    # process); a dataset held in memory never uses them
    workers: int = Field(2, ge=0)
    avdigits: AVDigitsConfig = AVDigitsConfig()
    avblend: AVBlendConfig = AVBlendConfig()
    manifest: ManifestDataConfig | None = None
    # how stages hold the features (fdkd.pipeline.data.dataset.load_dataset): auto keeps them in memory when they
    # fit memory_mb (MiB of float32 features), else every stage streams rows from the dataset on disk; true and
    # false force one or the other (false: tests and the scale bench stream even tiny data)
    in_memory: bool | Literal["auto"] = "auto"
    memory_mb: float = Field(1024.0, gt=0)

    @model_validator(mode="after")
    def _manifest_given(self):
        if self.source == "manifest" and self.manifest is None:
            raise ValueError("data.source is 'manifest' but data.manifest is not set")
        return self
