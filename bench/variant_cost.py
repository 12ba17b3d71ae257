"""CPU per source frame to make the broker's smaller sizes, against ``cv2.imencode`` of the full frame.

Run: ``python -m bench.variant_cost``. Everything runs in this process, one frame after
the other on one thread, timed with ``time.thread_time``: the broker's own function
(`broker.resize.shrink_jpeg`: Pillow's reduced-size decoding, a resize if still larger,
one encode) at each fixed width, two other ways to make the 320-wide size, and the
baseline, OpenCV encoding the full 1280x720 picture once (what a camera agent pays per
frame). Each case runs `--repeat` times, interleaved, and the table gives the median and
the range; ratios are against the baseline of the same repetition. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from broker.jpeg import jpeg_dimensions
from broker.resize import shrink_jpeg
from broker.variants import DEFAULT_QUALITY, WIDTHS

from .frames import synthesize

__all__ = ["main"]

SIZE = (1280, 720)
AGENT_QUALITY = 80  # the camera agent's default --quality


@dataclass(frozen=True)
class Case:
    label: str
    run: Callable[[int], bytes]  # frame index -> JPEG made


def cases(jpegs: list[bytes]) -> list[Case]:
    """The baseline first, then the broker's widths, then the other ways to make 320."""
    pictures = [cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) for jpeg in jpegs]
    count = len(jpegs)

    def imencode(index: int) -> bytes:
        params = [cv2.IMWRITE_JPEG_QUALITY, AGENT_QUALITY]
        return cv2.imencode(".jpg", pictures[index % count], params)[1].tobytes()

    def broker_width(width: int) -> Callable[[int], bytes]:
        return lambda index: shrink_jpeg(jpegs[index % count], width, DEFAULT_QUALITY)

    def pillow_full_decode(index: int) -> bytes:
        with Image.open(io.BytesIO(jpegs[index % count])) as image:
            small = image.convert("RGB").resize((320, 180), Image.Resampling.BOX)
        out = io.BytesIO()
        small.save(out, "JPEG", quality=DEFAULT_QUALITY)
        return out.getvalue()

    def opencv_reduced(index: int) -> bytes:
        picture = cv2.imdecode(np.frombuffer(jpegs[index % count], np.uint8), cv2.IMREAD_REDUCED_COLOR_4)
        return cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, DEFAULT_QUALITY])[1].tobytes()

    return [
        Case(f"cv2.imencode of the full {SIZE[0]}x{SIZE[1]} picture (baseline)", imencode),
        *(Case(f"broker: {width} wide (shrink_jpeg)", broker_width(width)) for width in WIDTHS[:-1]),
        Case("320 wide: Pillow, full decode, resize, encode", pillow_full_decode),
        Case("320 wide: OpenCV IMREAD_REDUCED_COLOR_4, encode", opencv_reduced),
    ]


def cpu_ms_per_frame(case: Case, frames: int) -> float:
    """Thread CPU milliseconds per frame over `frames` frames."""
    started = time.thread_time()
    for index in range(frames):
        case.run(index)
    return (time.thread_time() - started) * 1000 / frames


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.variant_cost", description=__doc__.split(".")[0])
    parser.add_argument("--frames", type=int, default=200, help="frames per case and repetition (200)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions, interleaved (5)")
    args = parser.parse_args(argv)
    jpegs = synthesize(*SIZE)
    all_cases = cases(jpegs)
    for case in all_cases:
        case.run(0)  # warm up: imports, libjpeg tables
    timings: dict[str, list[float]] = {case.label: [] for case in all_cases}
    ratios: dict[str, list[float]] = {case.label: [] for case in all_cases}
    for _ in range(args.repeat):
        baseline = None
        for case in all_cases:
            ms = cpu_ms_per_frame(case, args.frames)
            baseline = baseline or ms
            timings[case.label].append(ms)
            ratios[case.label].append(ms / baseline)
    source_kb = statistics.mean(map(len, jpegs)) / 1000
    print(
        f"source: {SIZE[0]}x{SIZE[1]} camera-like JPEGs of {source_kb:.0f} kB; {args.frames} frames x "
        f"{args.repeat} repetitions; quality {DEFAULT_QUALITY} for the sizes\n"
    )
    print("| case | output | CPU per source frame (median, range) | vs baseline (median, range) |")
    print("|---|---|---|---|")
    for case in all_cases:
        made = case.run(0)
        width, height = jpeg_dimensions(made) or (0, 0)
        ms, ratio = timings[case.label], ratios[case.label]
        print(
            f"| {case.label} | {width}x{height}, {len(made) / 1000:.1f} kB "
            f"| {statistics.median(ms):.2f} ms ({min(ms):.2f}-{max(ms):.2f}) "
            f"| {statistics.median(ratio):.2f}x ({min(ratio):.2f}-{max(ratio):.2f}) |"
        )


if __name__ == "__main__":
    main()
