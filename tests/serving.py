"""Helpers of the server tests: a tiny model and tokenizer, a live uvicorn server on a free loopback port,
plain HTTP calls, and the greedy text model.generate gives (what the server must reproduce)."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import openai
import torch
import uvicorn

import parcae_lm
from parcae_lm.serve.app import create_app
from parcae_lm.tokenizer import Tokenizer

TEXT = [
    "ROMEO: But soft, what light through yonder window breaks? It is the east.",
    "JULIET: O Romeo, Romeo, wherefore art thou Romeo? Deny thy father.",
    "MERCUTIO: A plague on both your houses! They have made worms' meat of me.",
] * 20
NAME = "micro"


def make_tokenizer() -> Tokenizer:
    return Tokenizer.train(TEXT, vocab_size=300)


def make_model(tokenizer: Tokenizer, name: str = "parcae-micro"):
    torch.manual_seed(0)
    cfg = dict(vocab_size=tokenizer.vocab_size, block_size=128, init_strategy="scaled")
    return parcae_lm.create_model(name, **cfg).eval()


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class LiveServer:
    """A uvicorn server in a thread on a free loopback port."""

    def __init__(self, served) -> None:
        self.served = served
        config = uvicorn.Config(create_app(served), host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=60, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def greedy_text(model, tokenizer: Tokenizer, prompt: str, n: int, num_steps: int | None = None) -> str:
    ids = torch.tensor([[tokenizer.bos_id, *tokenizer.encode(prompt)]])
    out = model.generate(ids, n, temperature=0, eos_id=tokenizer.eos_id, num_steps=num_steps, compiled=False)
    new = [t for t in out[0, ids.shape[1] :].tolist() if t != tokenizer.eos_id]
    return tokenizer.decode(new)
