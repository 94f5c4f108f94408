"""Evaluation: bits per byte (bpb), DCLM CORE / Core-Extended (tasks, bundle, build, core), LAMBADA and an
lm-evaluation-harness adapter (lm_eval_adapter, imported only on demand: it needs the `eval` extra)."""
