"""Corpora (`corpus`), FineWeb-Edu from the Hugging Face hub (`fineweb`), tokenized shards (`shards`), the
cached default Shakespeare pipeline (`default`) and batch loaders (`loader`). Import from the submodules;
this package file stays empty so argument parsing never has to load torch."""
