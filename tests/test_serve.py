"""The OpenAI-compatible server, live on 127.0.0.1, driven by the official `openai` client: greedy text over
HTTP equals model.generate, streaming equals non-streaming, per-request depth, OpenAI-style errors,
concurrent streams, disconnects, backpressure, and the scheduler's continuous batching on its own."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import torch

import parcae_lm
from parcae_lm.tokenizer import Tokenizer

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from parcae_lm.serve.app import served_model  # noqa: E402
from parcae_lm.serve.scheduler import (  # noqa: E402
    Finished,
    QueueFull,
    SamplingParams,
    Scheduler,
    wait_idle,
)
from serving import NAME, LiveServer, greedy_text, http, make_model, make_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer)


@pytest.fixture(scope="module")
def live(model, tokenizer):
    server = LiveServer(served_model(model, tokenizer, NAME, rows=8, max_queue=64, prefill_chunk=16))
    yield server
    server.stop()


def test_greedy_completion_over_http_equals_model_generate(live, model, tokenizer):
    client = live.client()
    for prompt in ["ROMEO:", "JULIET: O"]:
        r = client.completions.create(model=NAME, prompt=prompt, max_tokens=20, temperature=0)
        assert r.choices[0].text == greedy_text(model, tokenizer, prompt, 20)
        assert r.usage.prompt_tokens == 1 + len(tokenizer.encode(prompt))
        if r.choices[0].finish_reason == "length":
            assert r.usage.completion_tokens == len(r.choices[0].iterations) == 20
        usage = r.usage.model_dump()  # the count of iterations spent rides along OpenAI's usage fields
        assert usage["recurrence_iterations"] == model.config.mean_recurrence * r.usage.completion_tokens


def test_streaming_equals_non_streaming_on_both_endpoints(live):
    client = live.client()
    kw = dict(model=NAME, max_tokens=16, temperature=0)
    whole = client.completions.create(prompt="MERCUTIO:", **kw).choices[0].text
    parts = list(client.completions.create(prompt="MERCUTIO:", stream=True, **kw))
    assert "".join(c.choices[0].text for c in parts if c.choices) == whole
    assert parts[-1].choices[0].finish_reason in ("length", "stop")
    messages = [{"role": "user", "content": "Who is Romeo?"}]
    chat = client.chat.completions.create(messages=messages, **kw)
    assert chat.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        messages=messages, stream=True, stream_options={"include_usage": True}, **kw
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens


def test_sampling_knobs_and_parcae_fields(live, model, tokenizer):
    client = live.client()
    base = dict(model=NAME, prompt="ROMEO:", max_tokens=12)
    a = client.completions.create(temperature=0.9, top_p=0.9, seed=7, **base).choices[0].text
    b = client.completions.create(temperature=0.9, top_p=0.9, seed=7, **base).choices[0].text
    assert a == b  # the same seed, the same sample
    r = client.completions.create(temperature=0, n=2, **base)
    assert len(r.choices) == 2 and r.choices[0].text == r.choices[1].text
    # Test-time depth per request: the text of model.generate at that depth, 2 iterations per token.
    r = client.completions.create(temperature=0, extra_body={"recurrence": 2}, **base)
    assert r.choices[0].text == greedy_text(model, tokenizer, "ROMEO:", 12, num_steps=2)
    assert set(r.choices[0].iterations) == {2}
    # An exit threshold no state change stays above: every decoded token stops after its first iteration
    # (the first token comes out of the prompt's prefill, which runs the full depth).
    r = client.completions.create(temperature=0, extra_body={"exit_threshold": 1e9}, **base)
    its = r.choices[0].iterations
    assert its[0] == model.config.mean_recurrence and set(its[1:]) == {1}
    assert r.usage.model_dump()["recurrence_iterations"] == sum(its)
    # logprobs: the chosen token's and the top alternatives, consistent with greedy choice.
    r = client.completions.create(temperature=0, logprobs=2, **base)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) > 0
    assert all(
        max(top.values()) == pytest.approx(chosen) for top, chosen in zip(lp.top_logprobs, lp.token_logprobs)
    )
    # stop strings cut the text before them
    full = greedy_text(model, tokenizer, "ROMEO:", 12)
    stop = full[3:5]
    r = client.completions.create(temperature=0, stop=[stop], **base)
    assert r.choices[0].text == full[: full.find(stop)] and r.choices[0].finish_reason == "stop"


def test_models_health_metrics_and_page(live):
    client = live.client()
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]
    assert json.loads(http("GET", f"{live.url}/health")[1])["status"] == "ok"
    metrics = http("GET", f"{live.url}/metrics")[1]
    assert "parcae_generated_tokens_total" in metrics and "parcae_running_sequences" in metrics
    status, page = http("GET", f"{live.url}/")
    assert status == 200 and "<textarea" in page


def test_bad_requests_get_openai_errors(live):
    client = live.client()
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="context is 128 tokens"):
        client.completions.create(model=NAME, prompt="king " * 200, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=NAME, prompt="x", max_tokens=500)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=NAME, prompt="x", temperature=-1)
    with pytest.raises(openai.BadRequestError, match="top_p"):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "x"}], top_p=0)
    with pytest.raises(openai.BadRequestError, match="recurrence"):
        client.completions.create(model=NAME, prompt="x", extra_body={"recurrence": 99})
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=NAME, messages=[])
    for body in (b"{not json", b"[1, 2]", json.dumps({"model": NAME}).encode()):
        status, text = http("POST", f"{live.url}/v1/completions", body)
        assert status == 400 and json.loads(text)["error"]["type"] == "invalid_request_error"
    # ... and the server still answers.
    assert client.completions.create(model=NAME, prompt="x", max_tokens=2).choices[0].text is not None


async def _stream_text(url: str, prompt: str, max_tokens: int) -> str:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        stream = await client.completions.create(
            model=NAME, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True
        )
        return "".join([c.choices[0].text async for c in stream if c.choices])
    finally:
        await client.close()


def _load_test(live, model, tokenizer, clients: int, max_tokens: int) -> None:
    """`clients` concurrent greedy streams with different prompts: each equals its own model.generate."""
    words = ["king", "queen", "night", "day", "love", "death", "crown", "sword"]
    prompts = [f"{words[i % 8]} {words[(i // 8) % 8]}:" for i in range(clients)]
    expected = {p: greedy_text(model, tokenizer, p, max_tokens) for p in set(prompts)}

    async def run() -> list[str]:
        return await asyncio.wait_for(
            asyncio.gather(*[_stream_text(live.url, p, max_tokens) for p in prompts]), timeout=600
        )

    got = asyncio.run(run())
    assert got == [expected[p] for p in prompts]
    assert wait_idle(live.served.scheduler)


def test_concurrent_streams_are_not_lost_or_mixed(live, model, tokenizer):
    _load_test(live, model, tokenizer, clients=8, max_tokens=12)


@pytest.mark.slow
def test_load_32_concurrent_streaming_clients(live, model, tokenizer):
    _load_test(live, model, tokenizer, clients=32, max_tokens=48)


def test_client_disconnect_frees_its_row(live):
    stream = live.client().completions.create(
        model=NAME, prompt="ROMEO:", max_tokens=100, temperature=0.8, stream=True
    )
    next(iter(stream))
    stream.close()
    assert wait_idle(live.served.scheduler, timeout=10)


def test_full_queue_answers_429(model, tokenizer):
    server = LiveServer(served_model(model, tokenizer, NAME, rows=1, max_queue=1))
    try:

        async def one() -> str:
            client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
            try:
                stream = await client.completions.create(
                    model=NAME, prompt="ROMEO:", max_tokens=100, temperature=0.8, stream=True
                )
                async for _ in stream:
                    pass
                return "ok"
            except openai.RateLimitError as e:
                assert "busy" in str(e)
                return "429"
            finally:
                await client.close()

        async def run() -> list[str]:
            return await asyncio.gather(*[one() for _ in range(4)])

        outcomes = asyncio.run(run())
        assert "429" in outcomes and "ok" in outcomes
    finally:
        server.stop()


# -- the scheduler without HTTP ------------------------------------------------------------------


def _collect(events: list):
    return lambda e: events.append(e)


def test_scheduler_batches_rows_at_their_own_positions_and_drains(model, tokenizer):
    """Sequences of different prompt lengths join a running batch; each equals its own greedy decode;
    shutdown(drain=True) lets admitted sequences finish."""
    sched = Scheduler(model, tokenizer, rows=3, max_queue=8, prefill_chunk=4)
    prompts = ["ROMEO: But soft", "JULIET:", "MERCUTIO: A plague on both", "king"]
    events = {p: [] for p in prompts}
    sched.start()
    for p in prompts:
        ids = [tokenizer.bos_id, *tokenizer.encode(p)]
        sched.submit(ids, SamplingParams(max_tokens=10, temperature=0), _collect(events[p]))
        time.sleep(0.01)
    sched.shutdown(drain=True, timeout=60)
    for p in prompts:
        done = events[p][-1]
        assert isinstance(done, Finished) and done.reason in ("length", "stop")
        assert "".join(e.text for e in events[p][:-1]) == greedy_text(model, tokenizer, p, 10)


def test_scheduler_queue_bound_and_validation(model, tokenizer):
    sched = Scheduler(model, tokenizer, rows=1, max_queue=2)  # not started: nothing leaves the queue
    params = SamplingParams(max_tokens=4)
    sched.submit([1, 2], params, _collect([]))
    sched.submit([1, 2], params, _collect([]))
    with pytest.raises(QueueFull):
        sched.submit([1, 2], params, _collect([]))
    with pytest.raises(ValueError, match="context"):
        sched.submit([1] * 120, SamplingParams(max_tokens=20), _collect([]))


def test_gpt_serves_too(tokenizer):
    torch.manual_seed(0)
    gpt = parcae_lm.create_model("gpt-micro", vocab_size=tokenizer.vocab_size, block_size=128).eval()
    server = LiveServer(served_model(gpt, tokenizer, NAME))
    try:
        r = server.client().completions.create(model=NAME, prompt="ROMEO:", max_tokens=8, temperature=0)
        assert r.choices[0].text == greedy_text(gpt, tokenizer, "ROMEO:", 8)
        with pytest.raises(openai.BadRequestError, match="no recurrence"):
            server.client().completions.create(model=NAME, prompt="x", extra_body={"recurrence": 2})
    finally:
        server.stop()
