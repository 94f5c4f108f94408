"""The HTTP side: an OpenAI-compatible FastAPI application around a `Scheduler`, and `serve()` to run it.

    from parcae_lm.serve.app import serve
    serve("runs/latest", port=8000)          # or an exported directory, or a hub id 'org/name'

Endpoints: POST /v1/completions and /v1/chat/completions (streaming with Server-Sent Events when
"stream": true), GET /v1/models, /health, /metrics (Prometheus text) and / (a page to try the model).
Responses follow OpenAI's shapes; usage also counts `recurrence_iterations`, and every choice (and stream
chunk) carries `iterations`, the recurrence iterations each of its tokens took.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

import torch

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the server needs the `serve` extra: pip install 'parcae-lm[serve]'") from e

from parcae_lm.checkpoint import load_run
from parcae_lm.model.decode import compile_supported
from parcae_lm.serve.chat import CHAT_STOP, render_chat
from parcae_lm.serve.metrics import Metrics
from parcae_lm.serve.protocol import ChatRequest, Common, CompletionRequest, RequestError, parse
from parcae_lm.serve.scheduler import (
    Chunk,
    Event,
    Finished,
    QueueFull,
    SamplingParams,
    Scheduler,
    Sequence,
    ShuttingDown,
)
from parcae_lm.tokenizer import Tokenizer

COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
POLL_SECONDS = 0.25  # how often a non-streaming request checks that its client is still there


@dataclass
class Served:
    """What the application serves: the model's public name, its tokenizer and the scheduler."""

    name: str
    tokenizer: Tokenizer
    scheduler: Scheduler
    metrics: Metrics
    looped: bool


def create_app(served: Served) -> FastAPI:
    """The FastAPI application; its lifespan starts the scheduler and drains it on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        served.scheduler.start()
        yield
        await asyncio.to_thread(served.scheduler.shutdown, True)

    app = FastAPI(title="parcae-lm", lifespan=lifespan)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        if exc.status != 404:
            served.metrics.add("parcae_requests_rejected_total")
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return resources.files("parcae_lm.serve").joinpath("page.html").read_text()

    @app.get("/health")
    async def health() -> JSONResponse:
        running, waiting = served.scheduler.counts()
        body = {"status": "ok", "model": served.name, "running": running, "waiting": waiting}
        return JSONResponse(body)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return served.metrics.render()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card(served)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict:
        _check_model(served, name)
        return _model_card(served)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse(CompletionRequest, await _json(request))
        prompt = [served.tokenizer.bos_id, *served.tokenizer.encode(req.text())]
        return await _respond(served, request, req, prompt, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = parse(ChatRequest, await _json(request))
        text = render_chat([(m.role, m.content) for m in req.messages])
        prompt = [served.tokenizer.bos_id, *served.tokenizer.encode(text)]
        return await _respond(served, request, req, prompt, chat=True)

    return app


async def _json(request: Request) -> object:
    body = await request.body()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the request body is not valid JSON: {e}") from None


def _model_card(served: Served) -> dict:
    sched = served.scheduler
    return {
        "id": served.name,
        "object": "model",
        "created": 0,
        "owned_by": "parcae-lm",
        "context_length": sched.max_len,
        "recurrence": sched.depth if served.looped else None,
    }


def _check_model(served: Served, name: str) -> None:
    if name != served.name:
        raise RequestError(404, f"model {name!r} not found; this server serves {served.name!r}", "model")


def _params(served: Served, req: Common, prompt: list[int], chat: bool) -> SamplingParams:
    _check_model(served, req.model)
    limit = served.scheduler.max_len
    room = limit - len(prompt)
    if room < 1:
        raise RequestError(
            400,
            f"the prompt is {len(prompt)} tokens; this model's context is {limit} tokens, leaving no room to "
            "generate: shorten the prompt",
            "messages" if chat else "prompt",
        )
    wanted = req.token_limit() if isinstance(req, ChatRequest) else req.max_tokens
    if wanted is not None and wanted > room:
        raise RequestError(
            400,
            f"max_tokens is {wanted}, but the prompt is {len(prompt)} tokens and the context {limit}: at most "
            f"{room} tokens can be generated",
            "max_tokens",
        )
    depth = served.scheduler.depth
    if req.recurrence is not None and (not served.looped or req.recurrence > depth):
        allowed = f"1..{depth}" if served.looped else "none (this model has no recurrence)"
        raise RequestError(400, f"recurrence {req.recurrence} is out of range: {allowed}", "recurrence")
    if isinstance(req, ChatRequest):
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = wanted or room
    else:
        logprobs = req.logprobs
        max_tokens = wanted or min(COMPLETION_DEFAULT_TOKENS, room)
    stops = req.stops() + (tuple(CHAT_STOP) if chat else ())
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=None if req.top_p >= 1.0 else req.top_p,
        top_k=req.top_k,
        seed=req.seed,
        stop=stops,
        logprobs=logprobs,
        recurrence=req.recurrence,
        exit_threshold=req.exit_threshold,
    )


def _submit(served: Served, prompt: list[int], params: SamplingParams, n: int):
    """Queue n sequences; returns them and the asyncio queue their events arrive on as (index, event)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    seqs: list[Sequence] = []
    try:
        for i in range(n):
            seed = None if params.seed is None else params.seed + i
            p = SamplingParams(**{**params.__dict__, "seed": seed})

            def emit(event: Event, i: int = i) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, (i, event))

            seqs.append(served.scheduler.submit(prompt, p, emit))
    except QueueFull as e:
        _cancel(served, seqs)
        raise RequestError(429, f"the server is busy: {e}; retry later") from None
    except ShuttingDown:
        _cancel(served, seqs)
        raise RequestError(503, "the server is shutting down") from None
    served.metrics.add("parcae_requests_total")
    return seqs, queue


def _cancel(served: Served, seqs: list[Sequence]) -> None:
    for seq in seqs:
        served.scheduler.cancel(seq)


async def _respond(served: Served, request: Request, req: Common, prompt: list[int], chat: bool):
    params = _params(served, req, prompt, chat)
    seqs, queue = _submit(served, prompt, params, req.n)
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if req.stream:
        usage = req.stream_options is not None and req.stream_options.include_usage
        stream = _stream(served, seqs, queue, rid, created, chat, usage)
        return StreamingResponse(stream, media_type="text/event-stream")
    return await _collect(served, request, seqs, queue, rid, created, chat, params)


def _usage(finished: list[Finished]) -> dict:
    prompt = finished[0].prompt_tokens if finished else 0
    completion = sum(f.completion_tokens for f in finished)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "recurrence_iterations": sum(f.iterations for f in finished),
    }


async def _stream(
    served: Served,
    seqs: list[Sequence],
    queue: asyncio.Queue,
    rid: str,
    created: int,
    chat: bool,
    include_usage: bool,
) -> AsyncIterator[str]:
    kind = "chat.completion.chunk" if chat else "text_completion"

    def frame(choices: list[dict], usage: dict | None = None) -> str:
        body = {"id": rid, "object": kind, "created": created, "model": served.name, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    finished: dict[int, Finished] = {}
    try:
        if chat:
            yield frame(
                [{"index": i, "delta": {"role": "assistant", "content": ""}} for i in range(len(seqs))]
            )
        while len(finished) < len(seqs):
            i, event = await queue.get()
            if isinstance(event, Chunk):
                choice: dict = {"index": i, "finish_reason": None, "iterations": event.iterations}
                if chat:
                    choice["delta"] = {"content": event.text}
                    choice["logprobs"] = _chat_logprobs(event)
                else:
                    choice["text"] = event.text
                    choice["logprobs"] = _completion_logprobs(event)
                yield frame([choice])
                continue
            finished[i] = event
            if event.reason == "error":
                err = RequestError(500, f"generation failed: {event.error}")
                yield f"data: {json.dumps(err.body())}\n\n"
                return
            last: dict = {"index": i, "finish_reason": event.reason, "iterations": []}
            last.update({"delta": {}} if chat else {"text": ""})
            yield frame([last])
        if include_usage:
            yield frame([], _usage(list(finished.values())))
        yield "data: [DONE]\n\n"
    finally:  # a client that went away (or a finished stream): free the rows now
        _cancel(served, [s for j, s in enumerate(seqs) if j not in finished])


async def _collect(
    served: Served,
    request: Request,
    seqs: list[Sequence],
    queue: asyncio.Queue,
    rid: str,
    created: int,
    chat: bool,
    params: SamplingParams,
) -> JSONResponse:
    chunks: dict[int, list[Chunk]] = {i: [] for i in range(len(seqs))}
    finished: dict[int, Finished] = {}
    try:
        while len(finished) < len(seqs):
            try:
                i, event = await asyncio.wait_for(queue.get(), POLL_SECONDS)
            except TimeoutError:
                if await request.is_disconnected():
                    return JSONResponse({}, status_code=499)
                continue
            if isinstance(event, Chunk):
                chunks[i].append(event)
            else:
                finished[i] = event
                if event.reason == "error":
                    raise RequestError(500, f"generation failed: {event.error}")
    finally:
        _cancel(served, [s for j, s in enumerate(seqs) if j not in finished])
    choices = []
    for i in range(len(seqs)):
        merged = Chunk(
            "".join(c.text for c in chunks[i]),
            [t for c in chunks[i] for t in c.token_ids],
            [t for c in chunks[i] for t in c.iterations],
            None if params.logprobs is None else [lp for c in chunks[i] for lp in c.logprobs or []],
        )
        choice: dict = {"index": i, "finish_reason": finished[i].reason, "iterations": merged.iterations}
        if chat:
            choice["message"] = {"role": "assistant", "content": merged.text}
            choice["logprobs"] = _chat_logprobs(merged)
        else:
            choice["text"] = merged.text
            choice["logprobs"] = _completion_logprobs(merged)
        choices.append(choice)
    body = {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": served.name,
        "choices": choices,
        "usage": _usage(list(finished.values())),
    }
    return JSONResponse(body)


def _completion_logprobs(chunk: Chunk) -> dict | None:
    if chunk.logprobs is None:
        return None
    return {
        "tokens": [lp.token for lp in chunk.logprobs],
        "token_logprobs": [lp.logprob for lp in chunk.logprobs],
        "top_logprobs": [lp.top for lp in chunk.logprobs],
    }


def _chat_logprobs(chunk: Chunk) -> dict | None:
    if chunk.logprobs is None:
        return None

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            {**entry(lp.token, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top.items()]}
            for lp in chunk.logprobs
        ]
    }


def build_served(
    model_ref: str,
    name: str | None = None,
    device: str | torch.device | None = None,
    rows: int = 8,
    max_len: int | None = None,
    recurrence: int | None = None,
    compiled: bool | None = None,
    max_queue: int = 64,
    prefill_chunk: int = 128,
    tokenizer: str | None = None,
    allow_unverified: bool = False,
) -> Served:
    """Load a run directory, export or hub id and wrap it for serving. `compiled` (default: on CUDA
    where Triton works) compiles the batched step of every batch and length bucket before returning."""
    run = load_run(model_ref, device=device, tokenizer=tokenizer, allow_unverified=allow_unverified)
    if compiled is None:
        # On CPU the startup compile of every (batch, length) bucket takes minutes and batched eager steps
        # scale as well with the batch (docs/serving.md), so only CUDA compiles by default.
        compiled = run.model.device.type == "cuda" and compile_supported(run.model.device)
    return served_model(
        run.model,
        run.tokenizer,
        name or model_ref,
        rows,
        max_len,
        recurrence,
        compiled,
        max_queue,
        prefill_chunk,
    )


def served_model(
    model,
    tokenizer: Tokenizer,
    name: str,
    rows: int = 8,
    max_len: int | None = None,
    recurrence: int | None = None,
    compiled: bool = False,
    max_queue: int = 64,
    prefill_chunk: int = 128,
) -> Served:
    """A loaded model and tokenizer, ready for `create_app`."""
    model.eval()
    holder: dict[str, Scheduler] = {}

    def counts() -> tuple[int, int]:
        return holder["s"].counts()

    metrics = Metrics(
        {
            "parcae_running_sequences": ("sequences in the decode batch", lambda: counts()[0]),
            "parcae_waiting_requests": ("sequences waiting for a row", lambda: counts()[1]),
            "parcae_batch_rows": ("rows of the decode batch", lambda: rows),
        }
    )
    num_steps = recurrence if model.config.is_parcae else None
    sched = Scheduler(model, tokenizer, rows, max_len, num_steps, compiled, max_queue, prefill_chunk, metrics)
    holder["s"] = sched
    if compiled:
        sched.decoder.precompile()
    return Served(name, tokenizer, sched, metrics, model.config.is_parcae)


def serve(served: Served, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the server until interrupted (Ctrl-C / SIGTERM drain the running requests, then stop)."""
    import uvicorn

    uvicorn.run(create_app(served), host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
