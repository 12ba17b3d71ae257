"""What the broker and the camera agent share as long-running services: logging and systemd.

Kept apart from both so that the agent never imports the broker (and the reverse).
"""
