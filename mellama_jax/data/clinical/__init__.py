"""Clinical note preparation: PHI scrubbing, MIMIC placeholder normalisation, filters, dedup.

Entry points: `scrub_text(text) -> (text, counts)` for one note, `is_prepared_dir(path)` for the
output of `python -m mellama_jax.cli.prepare_clinical`. Imports no TensorFlow or JAX.
"""
from mellama_jax.data.clinical.io import is_prepared_dir, iter_prepared_notes, read_marker
from mellama_jax.data.clinical.mimic import normalize_mimic
from mellama_jax.data.clinical.phi import PhiScrubber, ScrubConfig, Span, find_phi, scrub_text
from mellama_jax.data.clinical.quality import QualityConfig, check_quality

__all__ = ["PhiScrubber", "ScrubConfig", "Span", "find_phi", "scrub_text", "normalize_mimic",
           "is_prepared_dir", "iter_prepared_notes", "read_marker", "QualityConfig", "check_quality"]
