"""The task functions behind the entry points: each takes a composed Hydra config and does one
job (train, evaluate, generate, export, distil, convert)."""
