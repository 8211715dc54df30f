"""Readers for the checkpoint formats the backend loads: one module per format.

Each reader module has ``detect(path) -> bool`` and ``read(path, model_id) -> (state_dict, card)``;
``tsfm_backend.checkpoints`` tries them in order. No reader ever executes pickled code.
"""
