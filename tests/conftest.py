"""Shared fixtures: every numerical test runs once per backend (CPU always, the
Hopper kernels when an sm90 GPU and a CUDA build are present)."""

from __future__ import annotations

import os
import random
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fa3

# Fresh random data on every run; the seed is printed so a failure can be replayed
# with JAX_FA3_TEST_SEED=<seed>.
SEED = int(os.environ.get("JAX_FA3_TEST_SEED", random.SystemRandom().randrange(2**31)))


def _seed_line() -> str:
    return f"jax_fa3 test seed: {SEED} (JAX_FA3_TEST_SEED), jax {jax.__version__}, CUDA kernels built: {jax_fa3.WITH_CUDA}"


def pytest_report_header(config):
    return _seed_line()


def pytest_terminal_summary(terminalreporter):
    """The seed again at the end: `pytest -q` (the README's command) prints no header."""
    terminalreporter.write_line(_seed_line())


def _hopper_device():
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        return None
    for device in gpus:
        if getattr(device, "compute_capability", "").startswith("9"):
            return device
    return None


def backend_params():
    return [
        pytest.param("cpu", id="cpu"),
        pytest.param("gpu", id="gpu", marks=pytest.mark.gpu),
    ]


@pytest.fixture(params=backend_params())
def device(request):
    """The device the inputs live on; computations follow their inputs."""
    if request.param == "cpu":
        return jax.devices("cpu")[0]
    hopper = _hopper_device()
    if hopper is None:
        pytest.skip("no sm90 (Hopper) GPU")
    if not jax_fa3.WITH_CUDA:
        pytest.skip("jax_fa3 was built without CUDA kernels")
    return hopper


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the session seed and the test's id (crc32: Python's str hash differs
    from process to process, which would make a seed unreplayable)."""
    return np.random.default_rng([SEED, zlib.crc32(request.node.nodeid.encode())])


def random_array(rng, shape, dtype, device, scale=1.0):
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    return jax.device_put(jnp.asarray(x, dtype=dtype), device)


def poison(device, nbytes):
    """Fill and free device memory with NaNs, so a kernel output that reuses it
    and is not fully written shows up as NaN."""
    n = max(1, nbytes // 4)
    buf = jax.device_put(jnp.full((n,), jnp.nan, jnp.float32), device)
    buf.block_until_ready()
    buf.delete()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A build with a restricted kernel set (JAX_FA3_HEAD_DIMS/JAX_FA3_DTYPES)
    refuses the other (dtype, head dim) pairs on the GPU with a clear error;
    such cases are skipped, with that error as the reason, not failed."""
    try:
        return (yield)
    except Exception as err:  # noqa: BLE001 - re-raised unless it is that error
        message = str(err)
        if "were not compiled in this build" in message:
            reason = next(line for line in message.splitlines() if "were not compiled" in line)
            pytest.skip(reason.strip())
        raise
