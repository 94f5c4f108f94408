"""`parcae serve MODEL`: an OpenAI-compatible HTTP server (the `serve` extra)."""

from __future__ import annotations

import torch
from jsonargparse.typing import PositiveInt

from parcae_lm.runtime import resolve_device


def serve(
    model: str,
    /,
    *,
    host: str = "127.0.0.1",
    port: PositiveInt = 8000,
    name: str | None = None,
    rows: PositiveInt = 8,
    max_queue: PositiveInt = 64,
    recurrence: PositiveInt | None = None,
    prefill_chunk: PositiveInt = 128,
    compile: bool | None = None,
    tokenizer: str | None = None,
    device: str = "auto",
    threads: PositiveInt | None = None,
    allow_unverified: bool = False,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API, with a page to try it at /.

    Endpoints: /v1/completions and /v1/chat/completions (streaming with "stream": true), /v1/models,
    /health, /metrics. Requests may set Parcae's "recurrence" (test-time depth) and "exit_threshold"
    (adaptive exit). Ctrl-C or SIGTERM finishes the running requests, then stops.

    Args:
        model: A run directory, a save_pretrained or exported directory, or a hub id.
        host: Address to listen on (127.0.0.1: this machine only).
        port: TCP port.
        name: The model's name in the API (default: MODEL as given).
        rows: Sequences decoded together in one batch.
        max_queue: Requests that may wait for a row; more are answered 429.
        recurrence: Deepest test-time recurrence a request may ask for, the depth every batch step runs
            (default: the model's mean recurrence).
        prefill_chunk: Prompt tokens prefilled per scheduler tick (running streams wait at most one chunk).
        compile: Compile the batched decode step of every batch and length bucket at startup (default:
            on CUDA with Triton; on CPU it costs minutes of startup).
        tokenizer: Tokenizer directory (default: the model's own).
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        threads: CPU threads for torch (default: torch's choice).
        allow_unverified: Load weights that fail verification (recorded sha256, NaN/inf values) anyway.
    """
    from parcae_lm.serve.app import build_served  # the optional 'serve' extra
    from parcae_lm.serve.app import serve as run_server

    if threads is not None:
        torch.set_num_threads(threads)
    served = build_served(
        model,
        name=name,
        device=resolve_device(device),
        rows=rows,
        recurrence=recurrence,
        compiled=compile,
        max_queue=max_queue,
        prefill_chunk=prefill_chunk,
        tokenizer=tokenizer,
        allow_unverified=allow_unverified,
    )
    print(
        f"serving {served.name} on http://{host}:{port} (rows {rows}, depth {served.scheduler.depth})",
        flush=True,
    )
    run_server(served, host=host, port=port)
