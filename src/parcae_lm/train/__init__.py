"""Training: `train(cfg)` runs a whole job described by a `parcae_lm.config.train.RunConfig`."""

from parcae_lm.train.run import RunResult, train

__all__ = ["RunResult", "train"]
