"""hyena_rtf: Hyena language models whose long convolutions are rational transfer functions."""

__version__ = "0.1.0"
