"""``python -m fdkd.pipeline`` is the same CLI as ``fdkd`` (``python -m fdkd``)."""

from fdkd.pipeline.cli import app

app()
