#!/usr/bin/env bash
# Everything a GPU session needs, in one call on the device machine (the
# machine is bare and goes cold quickly, so build + check + measure together):
#
#   bash tools/gpu_check.sh "build tests sanitize bench"
#
# Env: JAX_FA3_HEAD_DIMS / JAX_FA3_DTYPES restrict the kernel set,
#      JAX_FA3_WHEEL a prebuilt wheel to install instead of building (built
#        elsewhere against the same jaxlib and Python, carried with the call),
#      PYTEST_ARGS extra pytest arguments, PYTEST_WORKERS parallel pytest
#        workers (pytest-xdist; XLA compiling the references dominates the
#        suite's time and is CPU-bound), TESTS_TIMEOUT / BENCH_TIMEOUT seconds
#        (interrupted, each still reports what it ran), BENCH_ARGS benchmark
#        arguments.
# Logs land in $OUT (fetched back by the device tool).
set -uo pipefail
steps=${1:-"build tests"}
OUT=${OUT:-/tmp/jax_fa3_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
cd "$(dirname "$0")/.."

# The device machine has no network: the nvidia-cutlass wheel travels in .whl/.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,enforced.power.limit --format=csv
  python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
  echo "revision: $(cat .revision 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvcc --version | tail -1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

run_step() {  # name, command...: logs to $OUT/<name>.log, prints its tail
  local name=$1; shift
  local start=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local status=$?
  echo "== $name: exit $status, $((SECONDS - start)) s"
  tail -n "${TAIL_LINES:-25}" "$OUT/$name.log"
  return $status
}

for step in $steps; do
  case $step in
    build)
      if [ -n "${JAX_FA3_WHEEL:-}" ]; then
        run_step build bash tools/install_wheel.sh "$JAX_FA3_WHEEL" || exit 1
      else
        # A warm machine keeps the last install: skip the rebuild if the sources
        # and kernel set are unchanged.
        hash=$( (find cpp CMakeLists.txt pyproject.toml -type f -print0 | sort -z | xargs -0 sha1sum;
                 echo "${JAX_FA3_HEAD_DIMS:-all} ${JAX_FA3_DTYPES:-all}") | sha1sum | cut -c1-12)
        if [ "$(cat /tmp/jax_fa3_build_hash 2>/dev/null)" = "$hash" ]; then
          echo "== build: unchanged ($hash), kept"
          bash tools/install_wheel.sh  # refresh the Python files only
        else
          export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16} JAX_FA3_CUDA=ON JAX_FA3_PTXAS_VERBOSE=ON
          run_step build python3 -m pip install --no-build-isolation --no-deps -v . || exit 1
          echo "$hash" > /tmp/jax_fa3_build_hash
          grep -E "bytes stack frame" "$OUT/build.log" | sed 's/^ *//' | sort | uniq -c | head -10
          grep -cE "C7508|[1-9][0-9]* bytes spill stores" "$OUT/build.log" || true
        fi
      fi
      # No local memory, HGMMA in every main kernel, no discarded-result atomics.
      extension=$(cd /tmp && python3 -c "import importlib.util; print(importlib.util.find_spec('jax_fa3._C').origin)")
      python3 tools/dev/sass_audit.py "$extension" > "$OUT/sass_audit.txt" 2>&1; echo "== sass audit: rc $? ($(tail -1 "$OUT/sass_audit.txt"))"
      ;;
    tests)
      workers=""
      if [ "${PYTEST_WORKERS:-1}" -gt 1 ] && python3 -c "import xdist" 2>/dev/null; then workers="-n $PYTEST_WORKERS"; fi
      # SIGINT at TESTS_TIMEOUT: pytest stops and still reports what ran.
      run_step tests timeout -s INT "${TESTS_TIMEOUT:-3600}" \
        bash -c "cd tests && python3 -m pytest -q -m gpu -rfs $workers ${PYTEST_ARGS:-}"
      ;;
    sanitize)
      for tool in memcheck racecheck; do
        run_step "sanitize_$tool" compute-sanitizer --tool "$tool" --kernel-name kns=jax_fa3 \
          --error-exitcode 1 python3 tools/sanitize_case.py
      done
      ;;
    bench)
      # SM clock, power and throttle reasons every 500 ms while it runs: the
      # kernels' speed follows the clock the power cap leaves (0x4 = software
      # power cap; benchmarks/results/2026-12-03b_h200_fwd_gap.md).
      nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv -lms 500 > "$OUT/bench_clocks.csv" &
      smi=$!
      # From /tmp: in the checkout, the source folder would shadow the install.
      run_step bench env -C /tmp timeout -s INT "${BENCH_TIMEOUT:-540}" python3 -m jax_fa3.benchmark --markdown "$OUT/bench.md" --json "$OUT/bench.json" \
        --csv "$OUT/bench.csv" ${BENCH_ARGS:-}
      kill $smi
      ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
