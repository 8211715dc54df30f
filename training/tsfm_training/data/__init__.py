"""Datasets on disk, dataset pools, preprocessing with a cache, MONAI patch transforms and batch samplers."""
