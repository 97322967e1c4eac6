"""The context-parallel example runs end to end on CPU devices (its numerics are tested in test_ring.py;
here, that it runs and that each way agrees with one device to a few bfloat16 roundings)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def test_context_parallel_example():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, "context_parallel.py"), "--devices", "4",
                             "--seqlen", "64", "--iters", "1"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = re.findall(r"^\| (all-gather|ring, \w+).* \| ([^|]*) \|$", result.stdout, re.MULTILINE)
    assert [name for name, _ in rows] == ["all-gather", "ring, contiguous", "ring, zigzag", "ring, striped"], (
        result.stdout)
    for name, errors in rows:
        # Relative to the largest gradient: bfloat16 keeps 8 bits, so a few roundings stay far below 2^-5.
        assert all(float(e) < 2.0**-5 for e in errors.split(", ")), f"{name}: {errors}"
