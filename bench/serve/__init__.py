"""Serving under load: `fdkd serve` beside Triton and a bare ASGI floor, its tables and profiles."""
