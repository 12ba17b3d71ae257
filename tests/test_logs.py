"""Logs as collectors read them: `--log-format json` gives one object per line, with the
camera and the peer as keys of their own, from the broker and the agent alike."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from typing import Any

import aiohttp

from broker.logs import JsonFormatter

from .conftest import make_jpeg

TOKEN = "json-log-token-0123456789"


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a log, each parsed as one JSON object (a line that is not one fails)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_formatter_keeps_extra_fields_as_keys():
    """A record logged with `extra=` context has those fields as JSON keys beside the message."""
    record = logging.makeLogRecord(
        {"name": "broker.ingest", "levelno": logging.INFO, "levelname": "INFO", "msg": "camera %s: hi",
         "args": ("garden",), "camera": "garden", "peer": "10.0.0.7"}
    )  # fmt: skip
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "camera garden: hi"
    assert (entry["camera"], entry["peer"], entry["level"], entry["logger"]) == (
        "garden", "10.0.0.7", "info", "broker.ingest"
    )  # fmt: skip
    assert set(entry) == {"time", "level", "logger", "message", "camera", "peer"}


async def test_broker_json_log_lines_carry_camera_and_peer(run_broker):
    """A publisher's connect and disconnect lines name the camera and the peer as keys."""
    broker = await run_broker("--log-format", "json", env={"FRAMEBROKER_PUBLISH_TOKEN": TOKEN})
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            broker.url("/cameras/garden/publish"), headers={"Authorization": f"Bearer {TOKEN}"}
        )
        await ws.send_bytes(make_jpeg())
        await ws.close()
    broker.proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(broker.proc.wait(), 10)
    entries = json_lines(await broker.rest_of_log())
    about_publisher = [e for e in entries if "publisher" in e["message"]]
    assert [e["message"].split(" ")[-1] for e in about_publisher][:1] == ["connected"]
    assert len(about_publisher) >= 2  # connected, then disconnected
    for entry in about_publisher:
        assert (entry["camera"], entry["peer"]) == ("garden", "127.0.0.1"), entry


async def test_agent_json_log_lines_carry_the_camera_and_peer(broker):
    """`camera-agent --log-format json` logs JSON lines; its connection line has the camera and
    the broker it talks to (its peer) as keys."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "camera_agent", "--broker", broker.url(""), "--camera", "garden",
        "--source", "synthetic", "--fps", "5", "--log-format", "json",
        stderr=subprocess.PIPE,
        env={**os.environ, "CAMERA_AGENT_TOKEN": broker.token},
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
            assert line, "the agent exited early:\n" + "".join(lines)
            lines.append(line)
            entry = json.loads(line)
            if entry.get("camera") == "garden" and "connected to" in entry["message"]:
                assert entry["peer"] == f"127.0.0.1:{broker.port}"
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(proc.stderr.read(), 10)).decode()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert json_lines(rest)[-1]["message"] == "stopped"
