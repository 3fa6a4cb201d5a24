"""Distillation losses: one pure function per file, each docstring states its equation."""
