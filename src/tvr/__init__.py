"""tvr: CLIP-based text-video retrieval with pluggable heads."""

__version__ = "0.1.0"
