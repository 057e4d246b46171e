"""xmr: cross-modal image-sentence retrieval."""
__version__ = "0.1.0"
