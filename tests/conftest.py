"""Shared fixtures: every numerical test runs once per backend (CPU always, the
Hopper kernels when an sm90 GPU and a CUDA build are present)."""

from __future__ import annotations

import os
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fa3

# Fresh random data on every run; the seed is printed so a failure can be replayed
# with JAX_FA3_TEST_SEED=<seed>.
SEED = int(os.environ.get("JAX_FA3_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"jax_fa3 test seed: {SEED} (JAX_FA3_TEST_SEED), jax {jax.__version__}, CUDA kernels built: {jax_fa3.WITH_CUDA}"


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
    """A numpy Generator seeded from the session seed and the test's id."""
    return np.random.default_rng([SEED, abs(hash(request.node.nodeid)) % (2**31)])


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
