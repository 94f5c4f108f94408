"""Tokenizer: special ids, save/load (ours and the reference's bare tokenizer.json), round trips, byte counts."""

from __future__ import annotations

import json
import random

import pytest
import torch
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from parcae_lm.errors import TokenizerError
from parcae_lm.tokenizer import (
    CONFIG_FILE,
    MIN_VOCAB_SIZE,
    SPLIT_PATTERN,
    TOKEN_BYTES_FILE,
    TOKENIZER_FILE,
    Tokenizer,
)

MULTILINGUAL = [
    "The quick brown fox jumps over the lazy dog. 1234567 apples cost $3.50!",
    "안녕하세요, 세계! 오늘은 날씨가 좋네요. 한국어 문장입니다.",
    "Emoji: 🙂🚀👩‍👩‍👧 and accents: café, naïve, Ærøskøbing, Ωμέγα, Привет мир.",
    "def f(x):\n    return x ** 2  # squares\n\n\tTabs\tand  double  spaces\r\nCRLF line",
    "数学: ∑_{i=1}^n i = n(n+1)/2, ∫ e^x dx = e^x + C.",
] * 20


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(MULTILINGUAL, 400)


def test_special_ids_and_vocab(tok):
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert tok.vocab_size == 400
    assert [tok.id_to_token(i) for i in range(3)] == ["<|bos|>", "<|eos|>", "<|pad|>"]
    ids = tok.encode("hello", bos=True, eos=True)
    assert ids[0] == 0 and ids[-1] == 1 and ids[1:-1] == tok.encode("hello")


def test_special_text_is_not_a_special_token(tok):
    # A document containing the literal string must not inject a BOS/EOS id into the data stream.
    ids = tok.encode("x <|bos|> y <|eos|> <|pad|>")
    assert not {0, 1, 2} & set(ids)
    assert tok.decode(ids) == "x <|bos|> y <|eos|> <|pad|>"


def test_save_load_keeps_specials_and_encoding(tok, tmp_path):
    tok.save(tmp_path / "t")
    config = json.loads((tmp_path / "t" / CONFIG_FILE).read_text())
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (
        "<|bos|>",
        "<|eos|>",
        "<|pad|>",
    )
    loaded = Tokenizer.load(tmp_path / "t")
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id, loaded.vocab_size) == (0, 1, 2, 400)
    assert loaded.fingerprint() == tok.fingerprint()
    for text in MULTILINGUAL[:5]:
        assert loaded.encode(text) == tok.encode(text)
    saved_bytes = torch.load(tmp_path / "t" / TOKEN_BYTES_FILE)
    assert torch.equal(saved_bytes.long(), tok.token_bytes())


def test_config_declared_specials_win(tok, tmp_path):
    tok.save(tmp_path / "t")
    config = json.loads((tmp_path / "t" / CONFIG_FILE).read_text())
    config["pad_token"] = {"content": "<|eos|>", "special": True}  # HF AddedToken form
    (tmp_path / "t" / CONFIG_FILE).write_text(json.dumps(config))
    assert Tokenizer.load(tmp_path / "t").pad_id == 1


def test_reference_bare_tokenizer_json_loads_with_specials(tmp_path):
    # The reference's tok_train.py layout: BPE(byte_fallback=True), Split+ByteLevel, only tokenizer.json saved.
    hf = HFTokenizer(models.BPE(byte_fallback=True, unk_token=None, fuse_unk=False))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=350,
        min_frequency=0,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
        show_progress=False,
    )
    hf.train_from_iterator(MULTILINGUAL, trainer)
    (tmp_path / "ref").mkdir()
    hf.save(str(tmp_path / "ref" / TOKENIZER_FILE))
    tok = Tokenizer.load(tmp_path / "ref")
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    text = "안녕 🙂 reference"
    assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids
    assert tok.decode(tok.encode(text)) == text
    assert int(tok.token_bytes()[tok.encode(text)].sum()) == len(text.encode())


def test_gpt2_style_endoftext_serves_as_bos_and_eos(tmp_path):
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    hf.train_from_iterator(MULTILINGUAL, trainer)
    (tmp_path / "g").mkdir()
    hf.save(str(tmp_path / "g" / TOKENIZER_FILE))
    tok = Tokenizer.load(tmp_path / "g")
    assert tok.bos_id == tok.eos_id == tok.pad_id == hf.token_to_id("<|endoftext|>")


def _random_unicode(rng: random.Random, n: int) -> str:
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0xAC00, 0xD7A3), (0x4E00, 0x9FFF)]
    ranges += [(0x1F300, 0x1FAFF), (0x10000, 0x1000F)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)) if rng.random() > 0.1 else rng.choice(" \n\t\r 0123456789"))
    return "".join(out)


def test_round_trip_any_unicode(tok):
    rng = random.Random(0)
    texts = [*MULTILINGUAL[:5], "", " ", "\n\n\n", "  leading and trailing  ", "🙂" * 7, "가" * 9]
    texts += [_random_unicode(rng, rng.randint(1, 300)) for _ in range(200)]
    for text in texts:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    batch = tok.encode_batch(texts, bos=True)
    assert batch == [tok.encode(t, bos=True) for t in texts]


def test_token_bytes_sum_to_utf8_length(tok):
    tb = tok.token_bytes()
    assert tb.dtype == torch.long and tb.shape == (tok.vocab_size,)
    assert tb[:3].tolist() == [0, 0, 0] and bool((tb[3:] >= 1).all())
    rng = random.Random(1)
    for text in [*MULTILINGUAL[:5], *(_random_unicode(rng, 200) for _ in range(50))]:
        assert int(tb[tok.encode(text)].sum()) == len(text.encode("utf-8"))


def test_token_bytes_of_partial_utf8_tokens():
    # With no merges, every byte is its own token: a 3-byte Hangul syllable is three 1-byte tokens, and a
    # 4-byte emoji four. Counting characters (or assuming 3 bytes per odd token) would get this wrong.
    tok = Tokenizer.train(["plain ascii only"], MIN_VOCAB_SIZE)
    assert tok.vocab_size == MIN_VOCAB_SIZE
    assert bool((tok.token_bytes()[3:] == 1).all())
    ids = tok.encode("가🙂")
    assert len(ids) == 7 and int(tok.token_bytes()[ids].sum()) == 7
    assert tok.decode(ids) == "가🙂"
    assert tok.decode(ids[:1]) == "\ufffd"  # a lone lead byte decodes to the replacement character


def test_training_is_deterministic():
    a = Tokenizer.train(MULTILINGUAL, 330)
    b = Tokenizer.train(iter(MULTILINGUAL), 330)
    assert a.fingerprint() == b.fingerprint()


def test_bad_inputs(tmp_path, tok):
    with pytest.raises(TokenizerError, match="too small"):
        Tokenizer.train(MULTILINGUAL, MIN_VOCAB_SIZE - 1)
    with pytest.raises(TokenizerError, match="must be an int"):
        Tokenizer.train(MULTILINGUAL, 300.0)
    with pytest.raises(TokenizerError, match="no training text"):
        Tokenizer.train(iter([]), 300)
    with pytest.raises(TokenizerError, match="must be str"):
        Tokenizer.train([b"bytes"], 300)
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="holds no tokenizer.json"):
        Tokenizer.load(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / TOKENIZER_FILE).write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot parse"):
        Tokenizer.load(tmp_path / "broken")
    with pytest.raises(TokenizerError, match="out of range"):
        tok.decode([tok.vocab_size])
    with pytest.raises(TokenizerError, match="expects a str"):
        tok.encode(None)


def test_too_little_text_warns_and_reports_real_size():
    with pytest.warns(UserWarning, match="only supports"):
        tok = Tokenizer.train(["ab ab ab"], 5000)
    assert MIN_VOCAB_SIZE <= tok.vocab_size < 5000
