"""The table of tools/dev/jax_wheel_ab.sh: per grid point and mode, jax_fa3's
TFLOP/s under wheel A and wheel B (every run, then the means and B / A), and the
other implementations' range over all runs (they are the same code each run, so
their spread is the run-to-run noise).

    python3 tools/dev/jax_wheel_ab_table.py <folder with <n>-<A|B>.json>
"""
import collections
import json
import pathlib
import statistics
import sys


def main(folder):
    runs = sorted(pathlib.Path(folder).glob("*-[AB].json"), key=lambda p: int(p.stem.split("-")[0]))
    ours = collections.defaultdict(lambda: {"A": [], "B": []})
    refs = collections.defaultdict(lambda: collections.defaultdict(list))  # point -> impl -> values
    for path in runs:
        which = path.stem.split("-")[1]
        data = json.loads(path.read_text())
        for row in data["results"]:
            point = (row["dtype"], row["head_dim"], "causal" if row["causal"] else "full", row["seqlen"])
            for mode in data["meta"]["settings"]["modes"]:
                value = row.get(f"{mode}_tflops")
                if value is None:
                    continue
                if row["impl"] == "jax_fa3":
                    ours[point + (mode,)][which].append(value)
                else:
                    refs[point + (mode,)][row["impl"]].append(value)
    print("| dtype | hd | mask | seqlen | mode | A runs | B runs | A mean | B mean | B / A | references (min-max) |")
    print("|---|---:|---|---:|---|---|---|---:|---:|---:|---|")
    for key in sorted(ours):
        a, b = ours[key]["A"], ours[key]["B"]
        if not a or not b:
            continue
        ref = ", ".join(f"{impl} {min(v):.1f}-{max(v):.1f}" for impl, v in sorted(refs[key].items()))
        ma, mb = statistics.mean(a), statistics.mean(b)
        print(f"| {' | '.join(map(str, key))} | {', '.join(f'{x:.1f}' for x in a)} | "
              f"{', '.join(f'{x:.1f}' for x in b)} | {ma:.1f} | {mb:.1f} | {mb / ma:.3f} | {ref} |")


if __name__ == "__main__":
    main(sys.argv[1])
