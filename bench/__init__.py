"""fdkd's benchmarks: run from the checkout root as ``python -m bench.<group>.<name>`` (not installed).

Groups: ``science`` (does the teacher transfer knowledge: v2 and v3 tables), ``serve`` (``fdkd serve`` under load,
beside Triton), ``train`` (epoch time, memory format), ``accents`` (unseen-accent accuracy), ``compress``
(ONNX / INT8 speed and accuracy), ``gpu`` (the one prepared GPU check). Raw records: ``docs/records/``;
``bench.common`` writes the generated sections of the results documents.
"""
