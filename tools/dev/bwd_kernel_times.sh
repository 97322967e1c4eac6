#!/usr/bin/env bash
# Every kernel of the backward step through JAX, timed one by one under Nsight
# Compute (gpu__time_duration; clocks as found, caches flushed before each
# kernel): where jax_fa3's backward time goes beside the main kernel
# (preprocess, dq convert, anything XLA adds), next to FlashAttention-3's
# (with FA3_LIB) at the same points. tools/dev/attention_calls.py makes the
# calls (the benchmark's backward step; 16k tokens, hidden 2048).
#
#   OUT=... HDIMS="128 256" MASKS="full causal" DTYPE=bf16 FA3_LIB=.carry/fa3so/libfa3_ffi.so \
#     bash tools/dev/bwd_kernel_times.sh
#
# Raw CSVs: $OUT/kt-<impl>-<head dim>-<mask>.csv; the table on stdout and in
# $OUT/kernel_times.md (the device tool may not bring every CSV back): per
# kernel the number of launches per backward call, the median duration and the
# median share of the kernel's span its SMs were busy (sm__cycles_active over
# sm__cycles_elapsed, averaged over SMs: under a causal mask, what the grid's
# tail and the CTAs' uneven lengths leave idle).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/jax_fa3_out}
mkdir -p "$OUT"
calls=5  # plus attention_calls.py's warm-up call
impls=(jax_fa3)
[ -n "${FA3_LIB:-}" ] && impls+=(fa3)
for d in ${HDIMS:-128 256}; do
  for mask in ${MASKS:-full causal}; do
    for impl in "${impls[@]}"; do
      args=(--impl "$impl" --pass bwd --calls "$calls" --head-dim "$d" --seqlen "${SEQLEN:-16384}"
            --dtype "${DTYPE:-bf16}")
      [ "$mask" = causal ] && args+=(--causal)
      [ "$impl" = fa3 ] && args+=(--fa3-lib "$PWD/$FA3_LIB")
      # From /tmp: in the checkout, the source folder would shadow the install.
      env -C /tmp timeout 200 ncu --clock-control none --csv --print-units base \
        --metrics gpu__time_duration.sum,sm__cycles_active.avg,sm__cycles_elapsed.avg \
        python3 "$PWD/tools/dev/attention_calls.py" "${args[@]}" > "$OUT/kt-$impl-$d-$mask.csv" 2>&1
      echo "== $impl d$d $mask: ncu exit $?"
    done
  done
done
PYTHONPATH=tools/dev python3 - "$OUT" "$calls" <<'EOF' | tee "$OUT/kernel_times.md"
import collections, glob, os, statistics, sys

import ncu_metrics

out, calls = sys.argv[1], int(sys.argv[2])
for path in sorted(glob.glob(os.path.join(out, "kt-*.csv"))):
    times, busy = collections.defaultdict(list), collections.defaultdict(list)
    with open(path) as f:
        for name, m in ncu_metrics.per_launch(f).values():
            times[name].append(m["gpu__time_duration.sum"])
            busy[name].append(m["sm__cycles_active.avg"] / max(m["sm__cycles_elapsed.avg"], 1.0))
    print(f"\n{os.path.basename(path)[3:-4]}")
    print("| kernel | launches | median us | us per call | SMs busy |")
    print("|---|---:|---:|---:|---:|")
    total = 0.0
    for name, ns in sorted(times.items(), key=lambda kv: -statistics.median(kv[1]) * len(kv[1])):
        # The backward's kernels run once per call and once in the warm-up; the forward under
        # jax.vjp and the four inputs' conversions (wrapped_convert) fewer times than that.
        per_call = len(ns) / (calls + 1)
        if per_call < 1:
            continue
        us = statistics.median(ns) / 1e3
        total += us * per_call
        print(f"| {name[:90]} | {per_call:g} | {us:.1f} | {us * per_call:.1f} | {statistics.median(busy[name]):.3f} |")
    print(f"| total of the kernels above | | | {total:.1f} |")
EOF
