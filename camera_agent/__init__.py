"""The camera agent: capture JPEG frames and push them to a framebroker."""
