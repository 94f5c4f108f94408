"""Corpora, tokenized shards and batch loaders."""

from parcae_lm.data.corpus import Corpus, CorpusName, iter_documents, load_corpus, shakespeare_corpus
from parcae_lm.data.default import prepare_default
from parcae_lm.data.loader import TokenLoader, iter_eval_batches
from parcae_lm.data.shards import Manifest, Split, TokenStream, prepare

__all__ = [
    "Corpus",
    "CorpusName",
    "Manifest",
    "Split",
    "TokenLoader",
    "TokenStream",
    "iter_documents",
    "iter_eval_batches",
    "load_corpus",
    "prepare",
    "prepare_default",
    "shakespeare_corpus",
]
