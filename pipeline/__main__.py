"""``python -m pipeline`` is the same CLI as ``fdkd`` (torchrun launches modules this way)."""

from pipeline.cli import app

app()
