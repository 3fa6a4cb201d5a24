"""Unseen-accent accuracy of what `fdkd run` ships, and its per-accent errors."""
