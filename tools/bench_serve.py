"""Server throughput: aggregate tokens/s of N concurrent streaming clients against one, alternating in one run.

    python tools/bench_serve.py --out docs/results/serving/throughput

The model is the bench config (d=256, 4 heads, I=1024, 2/2/2, recurrence 4, block 512) with random
weights and a byte-level BPE trained on the default Shakespeare corpus (`prepare_default`, cached under
$PARCAE_CACHE) at the bench vocabulary; the server runs in this process on 127.0.0.1 with the compiled
batched step. Each client streams a completion of --max_tokens from the same prompt through the official
`openai` client, in a separate process (as clients are: their parsing does not hold the server's GIL);
throughput counts the completion tokens the server reports. Prints and writes (OUT.json) the median
aggregate tok/s per client count and its ratio to one stream (the floor of issue 13 is 4x at 8 streams).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import threading
import time
from pathlib import Path

import openai
import torch
import uvicorn

from parcae_lm.bench.train import bench_config
from parcae_lm.data.default import prepare_default
from parcae_lm.files import atomic_write_text
from parcae_lm.model import build_model
from parcae_lm.serve.app import create_app, served_model
from parcae_lm.tokenizer import Tokenizer

PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun."


async def _clients(url: str, n: int, max_tokens: int) -> tuple[int, float]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)

    async def one(i: int) -> int:
        stream = await client.completions.create(
            model="bench", prompt=PROMPT, max_tokens=max_tokens, temperature=0.8, seed=i, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        tokens = 0
        async for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return tokens

    t0 = time.perf_counter()
    counts = await asyncio.gather(*[one(i) for i in range(n)])
    seconds = time.perf_counter() - t0
    await client.close()
    return sum(counts), seconds


def _run_clients(url: str, n: int, max_tokens: int) -> tuple[int, float]:
    return asyncio.run(_clients(url, n, max_tokens))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="result path without extension (writes OUT.json)")
    ap.add_argument("--streams", default="1,8", help="concurrent clients to compare, e.g. 1,8")
    ap.add_argument("--max_tokens", type=int, default=128)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", choices=["true", "false"], default="true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok_dir, _ = prepare_default(vocab_size=32768, progress=False)
    tok = Tokenizer.load(tok_dir)
    torch.manual_seed(0)
    model = build_model(bench_config(block_size=512, vocab_size=tok.vocab_size)).eval()
    t0 = time.perf_counter()
    served = served_model(model, tok, "bench", rows=args.rows, compiled=args.compile == "true")
    compile_seconds = time.perf_counter() - t0
    server = uvicorn.Server(uvicorn.Config(create_app(served), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    streams = [int(s) for s in args.streams.split(",")]
    runs: dict[int, list[dict]] = {n: [] for n in streams}
    with multiprocessing.get_context("spawn").Pool(1) as clients:
        clients.apply(_run_clients, (url, max(streams), 8))  # warm up every bucket the runs will use
        for _ in range(args.reps):
            for n in streams:  # alternate: 1, 8, 1, 8, ...
                tokens, seconds = clients.apply(_run_clients, (url, n, args.max_tokens))
                runs[n].append({"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds})
    server.should_exit = True
    thread.join(30)
    median = {n: sorted(r["tokens_per_second"] for r in rs)[len(rs) // 2] for n, rs in runs.items()}
    result = {
        "config": "bench_config(block_size=512), random init; tokenizer: default corpus BPE at vocab 32768",
        "threads": args.threads,
        "rows": args.rows,
        "compiled": args.compile == "true",
        "startup_compile_seconds": compile_seconds,
        "max_tokens": args.max_tokens,
        "runs": {str(n): rs for n, rs in runs.items()},
        "median_tokens_per_second": {str(n): v for n, v in median.items()},
        "speedup_over_one_stream": {str(n): v / median[streams[0]] for n, v in median.items()},
    }
    out = Path(args.out).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    one = median[streams[0]]
    for n, v in median.items():
        print(f"{n:>3} streams: {v:7.1f} tok/s aggregate, {v / one:.2f}x {streams[0]} stream(s)")
    print(f"compile at startup {compile_seconds:.0f} s -> {out}")


if __name__ == "__main__":
    main()
