"""UCRN (Unimodal and Crossmodal Refinement Network) in PyTorch: data, model, losses,
metrics and the one-trial trainer. Nothing here imports Ray."""

__version__ = "0.1.0"
