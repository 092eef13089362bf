"""Checkpoint conversion: one streaming engine, one declarative table per source format."""
from omni_jax.conversion.engine import ConversionError, convert_hf_to_orbax, export_orbax_to_hf

__all__ = ["ConversionError", "convert_hf_to_orbax", "export_orbax_to_hf"]
