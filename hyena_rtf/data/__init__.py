"""Data: corpora, tokenizers, token caches and the Lightning data modules (language modelling and
synthetic recall tasks) behind the ``data`` config group."""
