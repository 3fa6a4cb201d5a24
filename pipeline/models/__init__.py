"""Encoders with ``forward_features(x) -> [B, D]`` and ``forward_head(f) -> logits``, and checkpoints."""
