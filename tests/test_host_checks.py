"""The kernels' index arithmetic, checked on the host (no GPU needed).

`tools/dev/host_checks.cu` is compiled with nvcc as host code against the
kernel headers: the forward tile order is a permutation and every scheduler
hands each tile to exactly one CTA; the mask ranges the kernels use agree with
the one definition of the mask; the backward's dQ values cover their part of
the dQ tile exactly once and its transposed smem views address the same bytes
(also for head dim 128's unmasked walk, which computes dQ transposed). Skipped
where nvcc or the CuTe headers are missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cutlass_include() -> str | None:
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        return None
    include = os.path.join(spec.submodule_search_locations[0], "source", "include")
    return include if os.path.exists(os.path.join(include, "cutlass", "arch", "barrier.h")) else None


def test_host_checks(tmp_path):
    nvcc = shutil.which("nvcc")
    cutlass = _cutlass_include()
    if nvcc is None or cutlass is None:
        pytest.skip("needs nvcc and the nvidia-cutlass headers")
    exe = tmp_path / "host_checks"
    build = subprocess.run(
        [nvcc, "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", f"-I{ROOT / 'cpp' / 'include'}",
         f"-I{cutlass}", str(ROOT / "tools" / "dev" / "host_checks.cu"), "-o", str(exe)],
        capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all host checks passed (0 failure(s))" in run.stdout
