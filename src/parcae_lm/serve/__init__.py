"""An OpenAI-compatible HTTP server for Parcae and GPT models (the `serve` extra: FastAPI + uvicorn).

- `scheduler.py`: continuous batching over a `BatchDecoder` — requests join and leave the running batch at
  token boundaries, each row at its own position and depth; chunked prefill; a bounded queue.
- `protocol.py`: request validation (OpenAI fields plus Parcae's `recurrence` / `exit_threshold`) and
  OpenAI-style errors.
- `chat.py`: the chat template for base models.
- `metrics.py`: Prometheus-style counters.
- `app.py`: the FastAPI application (`/v1/completions`, `/v1/chat/completions`, `/v1/models`, `/health`,
  `/metrics`, the page at `/`) and `serve()`, which runs it with uvicorn.
"""
