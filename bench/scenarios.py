"""The presets of ``python -m bench --scenario``: a scenario is one entry of SCENARIOS."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALL", "HD", "SCENARIOS", "VGA", "Scenario", "named", "scenario_help"]

HD = (1280, 720)
VGA = (640, 480)
ALL = "all"


@dataclass(frozen=True)
class Scenario:
    """Rows that measure one thing: a frame size and client counts of one kind, one row per count."""

    name: str
    summary: str  # for --help; lines after the first are indented there
    kind: str  # what the counts are: "ws", "mjpeg" or "snapshots" clients, or "idle" WebSocket viewers
    counts: tuple[int, ...]  # the default client counts (--viewers replaces them)
    size: tuple[int, int]
    tls: bool = False  # the broker serves TLS, measured against itself on plain TCP

    def clients(self, count: int) -> dict[str, int]:
        """The client counts of one row, as RunSpec fields."""
        return {"ws" if self.kind == "idle" else self.kind: count}

    @property
    def idle(self) -> bool:
        """No publisher: the row measures memory per connected viewer."""
        return self.kind == "idle"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("s1", "640x480 (~50 kB) at 30 fps, 10 WebSocket viewers", "ws", (10,), VGA),
    Scenario(
        "ws",
        "1280x720 (~120 kB) at 30 fps, 250, 1000 and 2000 WebSocket viewers",
        "ws",
        (250, 1000, 2000),
        HD,
    ),
    Scenario("mjpeg", "1280x720 at 30 fps, 250 and 1000 MJPEG viewers", "mjpeg", (250, 1000), HD),
    Scenario(
        "snapshot",
        "1280x720 at 30 fps published, 50 keep-alive clients fetching snapshot.jpg",
        "snapshots",
        (50,),
        HD,
    ),
    Scenario(
        "idle",
        "1000 WebSocket viewers of a camera without publisher: server RSS per viewer",
        "idle",
        (1000,),
        HD,
    ),
    Scenario(
        "wss",
        "1280x720 at 30 fps, 50 and 150 WebSocket viewers over TLS (a broker with a\n"
        "throwaway certificate; the viewers decrypt every byte), then the same broker on\n"
        'plain TCP: "TLS vs TCP" divides the CPU per frame of the two',
        "ws",
        (50, 150),
        HD,
        tls=True,
    ),
    Scenario(
        "cluster",
        "1280x720 at 30 fps, 1000 WebSocket viewers on node B of a cluster (a Redis the\n"
        "bench starts), the publisher on node A, against one broker in the same run",
        "ws",
        (1000,),
        HD,
    ),
)


def named(name: str) -> list[Scenario]:
    """The scenario called `name`, or every one for "all"."""
    return [scenario for scenario in SCENARIOS if name in (ALL, scenario.name)]


def scenario_help() -> str:
    """The scenario lines of --help."""
    indent = "\n" + " " * 12
    lines = [f"  {scenario.name:<9} {scenario.summary.replace(chr(10), indent)}" for scenario in SCENARIOS]
    return "\n".join([*lines, f"  {ALL:<9} all of the above, one after the other"])
