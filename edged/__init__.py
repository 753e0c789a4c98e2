"""edged: small language models and local agents on edge boxes."""

__version__ = "0.1.0"
