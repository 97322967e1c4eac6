#!/usr/bin/env bash
# Power draw and SM clock while the backward step runs back to back through
# JAX for a few seconds (long enough for the 700 W cap's steady clock), for
# jax_fa3 and, with FA3_LIB, FlashAttention-3, in turns: Nsight Compute's
# cycle counts compare kernels clock-free, this shows what clock each one gets
# under the cap, so whether a cycle gap widens or narrows in a training loop.
#
#   OUT=... POINTS="128:causal 256:causal" CALLS=800 ROUNDS=2 FA3_LIB=.carry/fa3so/libfa3_ffi.so \
#     bash tools/dev/bwd_power.sh
#
# Each round runs every point and implementation once. nvidia-smi samples
# every 50 ms into $OUT/pw-<impl>-<head dim>-<mask>-<round>.csv;
# the table keeps the samples with the SMs busy (utilization 100%) and prints
# their median power, SM clock and temperature beside attention_calls.py's
# summary: the calls' mean time and the first, fastest, slowest and last mean
# of chunks of CHUNK (default 100) calls (the drift as the draw settles).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/jax_fa3_out}
mkdir -p "$OUT"
impls=(jax_fa3)
[ -n "${FA3_LIB:-}" ] && impls+=(fa3)
for round in $(seq "${ROUNDS:-2}"); do
  for point in ${POINTS:-128:causal}; do
    IFS=: read -r d mask <<< "$point"
    for impl in "${impls[@]}"; do
      args=(--impl "$impl" --pass bwd --calls "${CALLS:-800}" --head-dim "$d" --seqlen "${SEQLEN:-16384}"
            --dtype "${DTYPE:-bf16}" --chunk-calls "${CHUNK:-100}")
      [ "$mask" = causal ] && args+=(--causal)
      [ "$impl" = fa3 ] && args+=(--fa3-lib "$PWD/$FA3_LIB")
      log="$OUT/pw-$impl-$d-$mask-$round"
      nvidia-smi --query-gpu=utilization.gpu,power.draw,clocks.sm,temperature.gpu --format=csv,noheader,nounits \
        -lms 50 > "$log.csv" &
      sampler=$!
      # From /tmp: in the checkout, the source folder would shadow the install.
      env -C /tmp timeout 120 python3 "$PWD/tools/dev/attention_calls.py" "${args[@]}" > "$log.txt" 2>&1
      kill "$sampler"
      wait "$sampler" 2>/dev/null
      python3 - "$log" "$impl d$d $mask round $round" <<'EOF'
import statistics, sys
log, title = sys.argv[1], sys.argv[2]
busy = []
for line in open(log + ".csv"):
    f = [x.strip() for x in line.split(",")]
    if len(f) == 4 and f[0] == "100":
        busy.append((float(f[1]), float(f[2]), float(f[3])))
timing = open(log + ".txt").read().strip().splitlines()
mean = timing[-1].split("mean ")[-1] if timing and "mean " in timing[-1] else "?"
if busy:
    med = [statistics.median(b[i] for b in busy) for i in range(3)]
    print(f"{title}: {mean}; {len(busy)} busy samples: power {med[0]:.0f} W, SM clock {med[1]:.0f} MHz, "
          f"{med[2]:.0f} C")
else:
    print(f"{title}: {mean}; no busy samples")
EOF
    done
  done
done
