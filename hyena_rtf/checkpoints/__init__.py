"""Checkpoints in and out: loading this project's runs, Hugging Face export, reading other code
bases' checkpoints (safari family), converting and distilling them."""
