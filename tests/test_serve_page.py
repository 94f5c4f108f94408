"""The web page at `/` in a real headless Chromium (Debian's `chromium`, driven by Playwright): type a
prompt, press Generate, tokens stream in, each coloured by the recurrence iterations it took."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium binary on PATH (apt-get install chromium)", allow_module_level=True)

from parcae_lm.serve.app import served_model  # noqa: E402
from serving import LiveServer, greedy_text, make_model, make_tokenizer  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def test_page_streams_tokens_coloured_by_depth(browser, tmp_path):
    tokenizer = make_tokenizer()
    model = make_model(tokenizer)
    server = LiveServer(served_model(model, tokenizer, "micro"))
    try:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('status').textContent.includes('micro')")
        assert page.locator("#depth").get_attribute("max") == str(model.config.mean_recurrence)
        page.fill("#prompt", "ROMEO:")
        page.fill("#max-tokens", "16")
        page.fill("#temperature", "0")
        page.click("#generate")
        page.wait_for_function("document.body.dataset.done === '1'", timeout=60_000)
        tokens = page.locator("#output .token")
        assert tokens.count() > 0
        text = "".join(tokens.all_text_contents())
        assert text == greedy_text(model, tokenizer, "ROMEO:", 16)
        depths = {int(d) for d in tokens.evaluate_all("els => els.map(e => e.dataset.iterations)")}
        assert depths == {model.config.mean_recurrence}
        colours = set(tokens.evaluate_all("els => els.map(e => e.style.background)"))
        assert all(c.startswith("rgb") for c in colours)
        assert "recurrence iterations" in page.text_content("#status")
        # A lower depth from the slider: other colours, the model's text at that depth.
        page.eval_on_selector("#depth", "el => { el.value = 1; el.dispatchEvent(new Event('input')); }")
        page.click("#generate")
        page.wait_for_function("document.body.dataset.done === '1'", timeout=60_000)
        shallow = page.locator("#output .token")
        assert "".join(shallow.all_text_contents()) == greedy_text(
            model, tokenizer, "ROMEO:", 16, num_steps=1
        )
        assert set(shallow.evaluate_all("els => els.map(e => e.style.background)")).isdisjoint(colours)
        page.screenshot(path=str(tmp_path / "page.png"))
    finally:
        server.stop()
