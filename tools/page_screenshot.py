"""A screenshot of the server's page after one generation (headless Chromium via Playwright).

    python tools/page_screenshot.py runs/latest --out docs/results/serving/page.png --threshold 0.1

Serves MODEL on a free loopback port (eager decoding), types the prompt, sets the depth, exit threshold
and temperature, presses Generate, waits for the stream to end and saves the page as a PNG.
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time

import torch
import uvicorn
from playwright.sync_api import sync_playwright

from parcae_lm.serve.app import build_served, create_app

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="run directory, exported directory or hub id")
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompt", default="ROMEO:")
    ap.add_argument("--depth", type=int, default=None, help="default: the model's depth")
    ap.add_argument("--threshold", type=float, default=0.0)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max_tokens", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    served = build_served(args.model, name="parcae", device="cpu", compiled=False)
    server = uvicorn.Server(uvicorn.Config(create_app(served), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": 1000, "height": 720})
            page.goto(url)
            page.wait_for_function("document.getElementById('status').textContent.includes('context')")
            page.fill("#prompt", args.prompt)
            if args.depth is not None:
                page.eval_on_selector(
                    "#depth", f"el => {{ el.value = {args.depth}; el.dispatchEvent(new Event('input')); }}"
                )
            page.fill("#threshold", str(args.threshold))
            page.fill("#temperature", str(args.temperature))
            page.fill("#max-tokens", str(args.max_tokens))
            page.click("#generate")
            page.wait_for_function("document.body.dataset.done === '1'", timeout=120_000)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
