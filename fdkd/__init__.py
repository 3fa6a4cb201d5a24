"""fdkd: cross-modal students for edge GPUs, from paired data to a validated, served model.

One namespace, four layers; each imports only the ones below it (``tests/test_layers.py`` checks):

- ``fdkd.pipeline`` (folder ``pipeline/``): the stages in order, data -> teacher -> distill -> export ->
  (calibrate + quantize) -> build -> validate, and the ``fdkd`` CLI (``pipeline/cli.py``).
- ``fdkd.calibration`` (``calibration/``): INT8 calibration sets, FP16 / INT8 Q/DQ quantization.
- ``fdkd.serving`` (``serving/``): what ships to the device: runtimes, numpy preprocessing, the HTTP app.
  Never imports torch, ``fdkd.pipeline`` or ``fdkd.calibration``: the serving image has none of them.
- ``fdkd`` itself (this folder): what the stages share, light and below all of them: ``fdkd.artifacts``
  (atomic writes, sha256, the run's files) and ``fdkd.onnx_lint`` (the TensorRT-legality lint of every graph).

The stage folders sit at the top of a checkout (the layout the design names); ``pyproject.toml`` installs them
under ``fdkd/`` (setuptools ``package-dir``), so a wheel adds the one import name ``fdkd`` to site-packages. In a
bare checkout (``PYTHONPATH=.``, a git worktree) the checkout's root joins this package's path below, so
``fdkd.pipeline`` imports from the same files there as it does installed (editable or not).
"""

from __future__ import annotations

from pathlib import Path as _Path

_here = _Path(__file__).resolve().parent
if not (_here / "pipeline").is_dir() and (_here.parent / "pipeline" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # a checkout: fdkd.pipeline is <root>/pipeline (see above)
