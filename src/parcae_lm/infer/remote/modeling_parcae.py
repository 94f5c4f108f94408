"""A Parcae (stable looped) language model for transformers' AutoModelForCausalLM (trust_remote_code=True).

The forward, the recurrence and the KV cache are the parcae-lm package's own, not a copy:
`pip install parcae-lm` where this model is loaded.
"""

from parcae_lm.infer.hf import ParcaeCache, ParcaeForCausalLM

__all__ = ["ParcaeCache", "ParcaeForCausalLM"]
