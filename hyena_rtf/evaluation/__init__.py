"""Scoring: perplexity over whole splits, recall accuracy, and the metric formulas both use."""
