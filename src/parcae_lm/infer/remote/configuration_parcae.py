"""Configuration of a Parcae model for transformers (loaded with trust_remote_code=True).

The implementation is the parcae-lm package's own: `pip install parcae-lm` where this model is loaded.
"""

from parcae_lm.infer.hf import ParcaeHFConfig

__all__ = ["ParcaeHFConfig"]
