"""``python -m fdkd`` is the same CLI as the ``fdkd`` command."""

from fdkd.pipeline.cli import app

app()
