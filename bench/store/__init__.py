"""Benchmarks of the on-disk dataset (``fdkd.pipeline.data.store``)."""
