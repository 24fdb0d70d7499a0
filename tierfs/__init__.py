"""tierfs: a tiered FUSE filesystem for LLM model weights."""

__version__ = "0.1.0"
