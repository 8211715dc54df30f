"""tsfm-training: pretraining and fine-tuning recipes whose checkpoints load in tsfm-backend."""

__version__ = "0.1.0"
