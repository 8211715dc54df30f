"""Inference: sliding-window automatic segmentation (``segmenter``) and its pure building blocks.

Submodules are imported where they are used, so importing this package does not load torch.
"""
