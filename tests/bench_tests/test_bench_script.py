"""bench.script on the CPU: a generated script for a calibrated cache (MagCache) carries the
ratios measured on the plain pipeline and gives accelopt's images."""

from __future__ import annotations

import json
from pathlib import Path

from bench import script


def test_a_magcache_script_carries_its_ratios_and_reproduces_the_images(tmp_path: Path) -> None:
    argv = ["--pipe", "TinyPixArt", "--plan", "magcache 0.06/3/0.2", "--execution", "eager",
            "--device", "cpu", "--repeats", "1", "--out", str(tmp_path)]  # fmt: skip
    assert script.main(argv) == 0
    (path,) = tmp_path.glob("script-*.json")
    record = json.loads(path.read_text())
    ratios = record["configs"]["magcache"]["ratios"]
    assert len(ratios) == record["steps"] and ratios[0] == 1.0
    assert record["max_pixel_diff"] == 0.0
