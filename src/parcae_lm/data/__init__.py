"""Corpora (`corpus`), the Hugging Face download path (`hub`), tokenized shards (`shards`), the cached
default Shakespeare pipeline (`default`) and batch loaders (`loader`). Import from the submodules; this
package file stays empty so argument parsing never has to load torch."""
