#!/usr/bin/env python3
"""Summarises a forward timeline: the "TL warp event clock" lines that a fwd_check
built with -DJAX_FA3_FWD_TIMELINE=1 prints for CTA 0's consumer warps (see
tools/dev/build_fwd_check.sh), as per-warp cycle medians of each phase (from one
event to the next: turn -> issued, s -> softmax, epi -> epi_end, ...).

  BENCH_HDIMS=128 BENCH_SEQLENS=512 BENCH_MASKS=full BENCH_SAMPLES=3 fwd_check-tl bench > log
  python3 tools/dev/fwd_timeline.py log [--trace N]   (N: also the first N events of warps 4 and 8)
"""
import collections
import statistics
import sys

NAMES = ["tile", "q", "turn", "issued", "s", "softmax", "epi", "epi_end"]


def main():
    path = sys.argv[1]
    trace = int(sys.argv[sys.argv.index("--trace") + 1]) if "--trace" in sys.argv else 0
    ev = collections.defaultdict(list)
    for line in open(path):
        f = line.split()
        if len(f) == 4 and f[0] == "TL":
            ev[int(f[1])].append((int(f[2]), int(f[3])))
    if not ev:
        print("no TL lines")
        return
    t0 = min(t for w in ev.values() for _, t in w)
    for w in sorted(ev):
        phases = collections.defaultdict(list)
        seq = ev[w]
        for (c0, a), (c1, b) in zip(seq, seq[1:]):
            phases[(NAMES[c0], NAMES[c1])].append((b - a) & 0xFFFFFFFF)
        turns = [t for c, t in seq if c == 2]
        tiles = [t for c, t in seq if c == 0]
        per = [(b - a) & 0xFFFFFFFF for a, b in zip(turns, turns[1:])]
        tile_len = [(b - a) & 0xFFFFFFFF for a, b in zip(tiles, tiles[1:])]
        print(f"warp {w}: {len(seq)} events, {len(tiles)} tiles; turn-to-turn median {statistics.median(per) if per else 0:.0f}"
              f", tile-to-tile median {statistics.median(tile_len) if tile_len else 0:.0f}")
        for k, v in sorted(phases.items(), key=lambda kv: -sum(kv[1])):
            print(f"   {k[0]:>8} -> {k[1]:<8} n={len(v):4d} median {statistics.median(v):7.0f}  min {min(v):7d}  max {max(v):7d}  total {sum(v):9d}")
    for w in (4, 8):
        for c, t in ev.get(w, [])[:trace]:
            print(f"T w{w} {NAMES[c]:>8} {((t - t0) & 0xFFFFFFFF):9d}")


if __name__ == "__main__":
    main()
