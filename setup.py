"""Packaging for Beam cluster workers only: `--setup_file ./setup.py` makes Dataflow/Flink/Spark
workers install this package (mellama_jax.cli.tokenize_beam's DoFns live in it). Its dependencies
come from `--requirements_file requirements.txt`, so none are declared here; local use needs no
install (run from the repository root)."""
from setuptools import find_packages, setup

setup(
    name="mellama-jax",
    version="0.0.0",
    packages=find_packages(include=["mellama_jax", "mellama_jax.*"]),
    package_data={"mellama_jax.data": ["samples/*.model", "samples/*.json"], "mellama_jax.plan": ["prices.json"]},
    python_requires=">=3.10",
)
