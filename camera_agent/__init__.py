"""The camera agent: capture JPEG frames and push them to a framebroker."""

# One version for the whole distribution; setup.cfg reads it from the broker package.
from broker import __version__

__all__ = ["__version__"]
