"""Command-line entry points (`python -m mellama_jax.cli.<command>`); the only package besides launch.py that parses flags."""
