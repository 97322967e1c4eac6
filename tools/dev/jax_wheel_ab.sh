#!/usr/bin/env bash
# Before/after of two jax_fa3 wheels through JAX in one device call: the wheels
# are installed in turns (A B B A, ROUNDS times), each running the benchmark
# with the same arguments, so both see the same clocks and power cap; the
# benchmark's other implementations (cuDNN, ...) run every time as a fixed
# reference. Harness gains have overstated what JAX users get; adopt a kernel
# change on this measurement.
#
#   bash tools/dev/jax_wheel_ab.sh <wheel A> <wheel B>
#
# Env: BENCH_ARGS (jax_fa3.benchmark arguments, default a bf16 head dim 128
#      forward grid), ROUNDS (default 1: A B B A).
# Logs: $OUT/ab/<n>-<A|B>.json per run, the table on stdout
#       (tools/dev/jax_wheel_ab_table.py).
set -uo pipefail
wheel_a=${1:?wheel A}
wheel_b=${2:?wheel B}
OUT=${OUT:-/tmp/jax_fa3_out}
mkdir -p "$OUT/ab"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
cd "$(dirname "$0")/../.."
args=${BENCH_ARGS:---dtypes bf16 --head-dims 128 --modes fwd --iters 6 --warmup 2 --input-sets 2}
nvidia-smi --query-gpu=clocks.sm,power.draw,clocks_throttle_reasons.active \
  --format=csv,noheader,nounits -lms 500 > "$OUT/ab/clocks.csv" &
smi=$!
n=0
for round in $(seq "${ROUNDS:-1}"); do
  for which in A B B A; do
    n=$((n + 1))
    wheel=$wheel_a; [ "$which" = B ] && wheel=$wheel_b
    bash tools/install_wheel.sh "$wheel" > "$OUT/ab/install.log" 2>&1 || { cat "$OUT/ab/install.log"; exit 1; }
    start=$SECONDS
    (cd /tmp && python3 -m jax_fa3.benchmark $args --quiet --json "$OUT/ab/$n-$which.json") > "$OUT/ab/$n-$which.log" 2>&1
    echo "run $n ($which, $(basename "$wheel")): rc $?, $((SECONDS - start)) s"
  done
done
kill $smi
python3 tools/dev/jax_wheel_ab_table.py "$OUT/ab"
awk -F', ' '$2 > 300 {print $1}' "$OUT/ab/clocks.csv" | sort -n |
  awk '{c[NR] = $1} END {if (NR) printf "loaded samples: %d, SM clock median %d MHz (min %d)\n", NR, c[int((NR + 1) / 2)], c[1]}'
