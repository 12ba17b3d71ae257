"""Stand-ins for the hardware edge only: picamera2/libcamera and misbehaving frame sources."""
