"""Pure-PyTorch model code: FFT convolution, long filters (RTF, S4D, implicit) behind one contract, Hyena operator, LM.

Nothing in this package imports Lightning, Hydra, wandb or datasets, so it can be shipped next to
a Hugging Face checkpoint and used on its own.
"""
