"""framebroker: a live-camera frame broker (aiohttp + uvloop)."""

__version__ = "0.1.0"
