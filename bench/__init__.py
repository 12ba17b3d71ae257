"""Benchmarks.

``python -m bench`` measures a broker's fan-out: one synthetic camera, WebSocket and
MJPEG viewers and snapshot clients, against a broker it starts (and the ideal relay
of ``bench.ideal`` as a baseline) or against yours with ``--url``; ``--help`` lists
the scenarios and explains the columns. ``python -m bench.ideal`` runs the ideal relay
alone, ``python -m bench.agent_cpu`` compares the camera agent's CPU per frame with
``cv2.imencode``.
"""
