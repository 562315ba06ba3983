"""The Lightning layer: the training module around the model, its callbacks, and the checks a
train config passes before any data is read."""
