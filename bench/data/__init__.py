"""Data benchmarks: real-size generated pairs through every stage (``bench.data.scale``, issue 29)."""
