"""Run configuration: one YAML file per run, validated by pydantic, with ``--set a.b=c`` overrides.

Unknown keys and wrong types are errors that name the key (``ConfigError``). The resolved
configuration is written next to every checkpoint and embedded in it
(``fdkd.pipeline.models.checkpoint.save_with_config``), and ``fdkd run`` keeps it in the run's ``config.yaml``
and ``manifest.json``, its sections hashed into the stage keys (``fdkd.pipeline.run``).

``RunConfig`` (here) is the root; each stage's settings live in the module named for it:

- ``data.py``: ``data:`` (the built-in paired sources, a manifest, the student's labels);
- ``model.py``: the encoders (``ModelConfig``) and ``teacher:``;
- ``train.py``: what the teacher and distill stages share: ``optim:`` (``OptimConfig``), ``accel:`` and
  ``tracking:``;
- ``distill.py``: ``distill:``, each method's settings beside the names of its objective and loss;
- ``deploy.py``: ``export:``, ``quantize:``, ``build:`` and ``validate:`` (the gates);
- ``base.py``: the strict base every section derives from, ``ConfigError``.

Every name is importable from ``fdkd.pipeline.config`` itself. The field order is the order of the dumped YAML (and
of the stage keys hashed from it): reorder nothing.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from fdkd.pipeline.config.base import ConfigError, Modality, _Strict, set_path
from fdkd.pipeline.config.data import AVBlendConfig, AVDigitsConfig, DataConfig, ManifestDataConfig
from fdkd.pipeline.config.deploy import (
    BuildConfig,
    CalibMethod,
    ExportConfig,
    GateConfig,
    QuantizeConfig,
    ValidateConfig,
)
from fdkd.pipeline.config.distill import (
    AudioAugmentConfig,
    AutoCandidate,
    AutoConfig,
    DISTConfig,
    DistillConfig,
    DistillMethod,
    DKDConfig,
    FDConfig,
    FeatConfig,
    ImageAugmentConfig,
    KDConfig,
    LabelSmoothingConfig,
    MethodName,
    PseudoConfig,
    SelfTrainingConfig,
)
from fdkd.pipeline.config.model import ModelConfig, TeacherConfig
from fdkd.pipeline.config.train import AccelConfig, OptimConfig, TrackingConfig

__all__ = [
    "ConfigError",
    "set_path",
    "Modality",
    "MethodName",
    "DistillMethod",
    "CalibMethod",
    "AVDigitsConfig",
    "AVBlendConfig",
    "ManifestDataConfig",
    "DataConfig",
    "ModelConfig",
    "TeacherConfig",
    "OptimConfig",
    "AccelConfig",
    "TrackingConfig",
    "SelfTrainingConfig",
    "PseudoConfig",
    "KDConfig",
    "FeatConfig",
    "DKDConfig",
    "DISTConfig",
    "FDConfig",
    "LabelSmoothingConfig",
    "AutoCandidate",
    "AutoConfig",
    "AudioAugmentConfig",
    "ImageAugmentConfig",
    "DistillConfig",
    "ExportConfig",
    "QuantizeConfig",
    "BuildConfig",
    "GateConfig",
    "ValidateConfig",
    "RunConfig",
    "default_config_path",
    "apply_override",
    "load_config",
    "config_to_dict",
    "dump_config",
]


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
    tracking: TrackingConfig = TrackingConfig()  # no stage key hashes it: trackers never change artifacts

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
        if self.data.source != "manifest" and self.teacher.modality not in ("image", "audio"):
            raise ValueError(f"teacher.modality is {self.teacher.modality!r}, but the built-in data "
                             f"({self.data.source}) holds image and audio only")
        if self.student_modality == self.teacher.modality:
            raise ValueError(f"the teacher and the student both read {self.teacher.modality!r}; give the student's "
                             "input its own name in data.manifest.student_modality (a kind with a suffix, e.g. "
                             f"{self.teacher.modality.split('_')[0]}_student)")
        return self

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name

    @property
    def student_modality(self) -> Modality:
        """The manifest's ``student_modality`` where it names one, else the other of image and audio."""
        m = self.data.manifest
        if self.data.source == "manifest" and m is not None and m.student_modality is not None:
            return m.student_modality
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
    file_data = tree.get("data")
    file_source = file_data.get("source") if isinstance(file_data, dict) else None
    for o in overrides:
        apply_override(tree, o)
    _drop_simulated_labels(tree, file_source, overrides)
    _manifest_run_name(tree, file_source, overrides)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(e, str(path))) from None


# Keys that simulate a partly labelled or noisy rig on the config file's own data source (the built-in run keeps 5 %
# of avdigits' labels). Overrides that switch ``data.source`` and leave these alone start the new source with its
# own labels: ``fdkd run --set data.source=manifest ...`` on the built-in config must not drop 95 % of a user's
# labels (a manifest's unlabelled pairs are its empty label cells).
SOURCE_BOUND_KEYS = ("labelled", "label_noise")


def _drop_simulated_labels(tree: dict, file_source, overrides) -> None:
    data = tree.get("data")
    if not isinstance(data, dict) or data.get("source", file_source) == file_source:
        return
    set_by_override = {o.split("=", 1)[0].strip() for o in overrides}
    if "data" in set_by_override:  # the whole mapping replaced: what it holds is the user's, not the file's
        return
    for key in SOURCE_BOUND_KEYS:
        if f"data.{key}" not in set_by_override:
            data.pop(key, None)


def _manifest_run_name(tree: dict, file_source, overrides) -> None:
    """A run switched to a manifest by an override gets its own name, ``manifest-<manifest file stem>``, unless
    ``name`` is set too: the config file's name belongs to its own data, and keeping it would put the user's run
    in (and overwrite) the built-in run's directory."""
    data = tree.get("data")
    if not isinstance(data, dict) or data.get("source") != "manifest" or file_source == "manifest":
        return
    if "name" in {o.split("=", 1)[0].strip() for o in overrides}:
        return
    path = data.get("manifest", {}).get("path") if isinstance(data.get("manifest"), dict) else None
    if isinstance(path, str) and path:
        tree["name"] = f"manifest-{Path(path).stem}"


def config_to_dict(cfg: BaseModel) -> dict:
    return cfg.model_dump(mode="json", by_alias=True)


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
