"""Benchmarks of hyena_rtf: ``python -m bench --help``. Each module produces a markdown report."""
