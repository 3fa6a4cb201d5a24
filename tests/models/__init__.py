"""Tests that need timm and torchvision (the [timm] extra): run from the models venv (.ci/run builds it)."""
