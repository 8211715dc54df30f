"""Readers for the checkpoint formats the backend loads: one module per format.

Formats known by their files (ours, nnU-Net v1) have ``detect(path)`` and ``read(path, model_id)``;
torch files known by their top-level keys (nnU-Net v2, PyMIC, SuPreM, 3DSAM-adapter) have
``matches(checkpoint)`` and ``from_checkpoint(checkpoint, path, model_id)``. Each returns
``(state_dict, card)``; ``tsfm_backend.checkpoints`` tries them in order. No reader executes pickled code.
"""
