"""Turns gpu_harness.sh logs (fwd_check.log, bench-<variant>.log) into one
Markdown table: forward TFLOP/s per grid point, one column per build, all
from the same device call.

    python tools/dev/harness_table.py <logs folder> > table.md
"""

from __future__ import annotations

import pathlib
import re
import sys

LINE = re.compile(r"^BENCH (\w+) d(\d+)\s+s(\d+)\s+b\d+\s+h\d+\s+(\w+)\s+([\d.]+) ms .*?\s([\d.]+) TFLOP/s .* (PASS|FAIL)$")


def read(path: pathlib.Path) -> dict[tuple, tuple[float, str]]:
    out = {}
    for line in path.read_text().splitlines():
        m = LINE.match(line)
        if m:
            dtype, hd, s, mask, _ms, tf, ok = m.groups()
            out[(dtype, int(hd), mask, int(s))] = (float(tf), ok)
    return out


def main(folder: str) -> None:
    root = pathlib.Path(folder)
    builds = {"this revision": read(root / "fwd_check.log")}
    for log in sorted(root.glob("bench-*.log")):
        builds[log.stem.removeprefix("bench-")] = read(log)
    keys = sorted(builds["this revision"], key=lambda k: (k[0], k[1] != 128, k[1], k[2] != "full", k[3]))
    names = list(builds)
    print("| dtype | head dim | mask | seqlen | " + " | ".join(names) + " |")
    print("|---|---:|---|---:|" + "---:|" * len(names))
    for key in keys:
        cells = []
        for name in names:
            tf, ok = builds[name].get(key, (None, ""))
            cells.append("" if tf is None else f"{tf:.1f}" + ("" if ok == "PASS" else f" ({ok})"))
        print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
