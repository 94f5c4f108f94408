"""lm-evaluation-harness adapter: registers parcae-lm models as lm-eval model type `parcae`.

Needs the optional extra (`pip install 'parcae-lm[eval]'`). lm-eval finds models through its registry, which
is filled by importing modules, so this module must be imported before lm-eval looks the name up:

    # command line: register, then run lm-eval's own CLI with the remaining arguments
    python -m parcae_lm.eval.lm_eval_adapter run --model parcae \\
        --model_args pretrained=runs/tiny,num_steps=8 --tasks lambada_openai --batch_size 16

    # Python
    import lm_eval, parcae_lm.eval.lm_eval_adapter  # noqa: F401  (registers "parcae")
    lm_eval.simple_evaluate(model="parcae", model_args="pretrained=runs/tiny", tasks=["lambada_openai"])

model_args: pretrained=DIR (run or save_pretrained directory), tokenizer=DIR (default DIR/tokenizer),
num_steps=T (test-time depth of looped models; default mean_recurrence), max_length (default block_size),
max_gen_toks (default 256). Custom tasks (e.g. local json data) come in through lm-eval's --include_path.

Every request is scored with a BOS token in front, as parcae-lm models see at the start of each training
document; `parcae eval lambada` does the same, so both give the same LAMBADA numbers.
"""

from __future__ import annotations

import sys
import warnings

import torch

from parcae_lm.errors import EvalError

try:
    import lm_eval.models  # noqa: F401  (fill the built-in registry first, so "hf" etc. stay available)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise EvalError("the lm-eval adapter needs lm-evaluation-harness: pip install 'parcae-lm[eval]'") from e

from parcae_lm.checkpoint import load_run
from parcae_lm.eval.common import EvalTokenizer, bos_token, forward_logits, model_device, pad_token
from parcae_lm.eval.core import Row, score_rows


@register_model("parcae")
class ParcaeLM(LM):
    def __init__(
        self,
        pretrained: str | None = None,
        tokenizer: str | None = None,
        num_steps: int | None = None,
        device: str | None = None,
        batch_size: int | str = 8,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        model: torch.nn.Module | None = None,
        tokenizer_obj: EvalTokenizer | None = None,
        **unused,
    ) -> None:
        super().__init__()
        if model is None:
            if pretrained is None:
                raise EvalError("model_args needs pretrained=DIR (a run or save_pretrained directory)")
            if device and device.startswith("cuda") and not torch.cuda.is_available():
                # lm-eval's CLI asks for cuda by default; like its HF model, fall back to the CPU
                warnings.warn(f"device {device!r} is not available; using cpu", stacklevel=2)
                device = "cpu"
            run = load_run(pretrained, device=device, tokenizer=tokenizer)
            model, tokenizer_obj = run.model, run.tokenizer
        if tokenizer_obj is None:
            raise EvalError("ParcaeLM needs a tokenizer (tokenizer=DIR or tokenizer_obj=...)")
        self.model = model.eval()
        self.tok = tokenizer_obj
        recurrent = getattr(model.config, "mean_recurrence", None) is not None
        if num_steps is not None and not recurrent:
            raise EvalError("num_steps only applies to looped (Parcae) models")
        self.num_steps = int(num_steps) if num_steps is not None else None
        # lm-eval may pass "auto"; we have no memory probing, so fall back to the default
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.max_length = int(max_length or model.config.block_size)
        if self.max_length > model.config.block_size:
            raise EvalError(f"max_length {self.max_length} exceeds block_size {model.config.block_size}")
        self.max_gen_toks = int(max_gen_toks)
        self.bos, self.pad = bos_token(tokenizer_obj), pad_token(tokenizer_obj)

    # ------------------------------------------------------------------------------- scoring helpers

    def _score(self, rows: list[Row], desc: str) -> list[tuple[float, bool]]:
        mean_loss, greedy = score_rows(
            self.model, rows, num_steps=self.num_steps, batch_size=self.batch_size, pad_id=self.pad, desc=desc
        )
        return [(-m * (r.end - r.start), g) for m, g, r in zip(mean_loss, greedy, rows)]

    def _pair_row(self, i: int, context: str, continuation: str) -> Row:
        # lm-eval's convention: trailing spaces of the context belong to the continuation
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        ctx = self.tok.encode(context)
        whole = self.tok.encode(context + continuation)
        if len(whole) <= len(ctx):
            raise EvalError(f"request {i}: the continuation {continuation!r} encodes to no tokens")
        tokens, start = [self.bos, *whole], 1 + len(ctx)
        # score_rows feeds all but the last token, so a row may hold max_length + 1 tokens
        crop = max(0, len(tokens) - (self.max_length + 1))
        return Row(i, tokens[crop:], max(start - crop, 1), len(tokens) - crop)

    # -------------------------------------------------------------------------------- lm-eval API

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        rows = [self._pair_row(i, *req.args) for i, req in enumerate(requests)]
        return self._score(rows, "" if disable_tqdm else "loglikelihood")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        rows: list[Row] = []
        for i, req in enumerate(requests):
            (text,) = req.args
            windows = get_rolling_token_windows(self.tok.encode(text), self.bos, self.max_length, 1)
            for ctx, pred in map(make_disjoint_window, windows):
                tokens = ctx + pred
                rows.append(Row(i, tokens, len(ctx), len(tokens)))
        totals = [0.0] * len(requests)
        for row, (logprob, _) in zip(rows, self._score(rows, "" if disable_tqdm else "rolling")):
            totals[row.example] += logprob
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            max_new = min(max_new, self.max_length - 1)
            prompt = [self.bos, *self.tok.encode(context)][-(self.max_length - max_new) :]
            text = self.tok.decode(self._greedy(prompt, max_new, until))
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            out.append(text)
        return out

    def _greedy(self, prompt: list[int], max_new: int, until: list[str]) -> list[int]:
        ids = torch.tensor([prompt], device=model_device(self.model))
        if hasattr(self.model, "generate"):  # KV-cached decoding
            full = self.model.generate(
                ids, max_new, temperature=0.0, num_steps=self.num_steps, eos_id=self.tok.eos_id
            )
            new = full[0, len(prompt) :].tolist()
            return new[: new.index(self.tok.eos_id)] if self.tok.eos_id in new else new
        new: list[int] = []
        for _ in range(max_new):  # plain re-encoding loop for models without generate()
            nxt = int(forward_logits(self.model, ids, self.num_steps)[0, -1].argmax())
            if nxt == self.tok.eos_id:
                break
            new.append(nxt)
            if any(s and s in self.tok.decode(new) for s in until):
                break
            ids = torch.cat([ids, ids.new_tensor([[nxt]])], dim=1)
        return new


def main(argv: list[str] | None = None) -> None:
    """`python -m parcae_lm.eval.lm_eval_adapter ...`: lm-eval's CLI with the `parcae` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
