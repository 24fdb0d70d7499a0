"""tierfs: a tiered FUSE filesystem for LLM model weights."""

from pathlib import Path

__version__ = "0.1.0"

# Here rather than in tierfs.config, so that the CLI's help needs no pydantic.
DEFAULT_CONFIG_PATH = Path("/etc/tierfs/config.toml")
