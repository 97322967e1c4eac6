"""The extension's build metadata and the jaxlib (XLA FFI) version guard."""

from __future__ import annotations

import types

import jaxlib
import pytest

import jax_fa3
from jax_fa3 import _ffi


def test_registrations_cover_both_platforms():
    regs = _ffi._C.registrations()
    assert set(regs) == {"cpu", "CUDA"}
    for targets in regs.values():
        assert set(targets) == {"jax_fa3_fwd", "jax_fa3_bwd"}


def test_build_metadata():
    assert isinstance(jax_fa3.WITH_CUDA, bool)
    major, minor = _ffi._C.ffi_api_version
    assert major >= 0 and minor >= 0
    if jax_fa3.WITH_CUDA:
        assert jax_fa3.COMPILED_KERNELS, "a CUDA build must compile at least one kernel pair"
        assert all(d in ("float16", "bfloat16") and h in (64, 96, 128, 192, 256) for d, h in jax_fa3.COMPILED_KERNELS)
        assert _ffi._C.bwd_workspace_bytes(2, 100, 100, 8, 2, 128, False) > 0
    else:
        assert jax_fa3.COMPILED_KERNELS == ()


def test_older_jaxlib_is_refused_with_a_clear_error(monkeypatch):
    fake = types.SimpleNamespace(built_jaxlib_version="999.0.0", ffi_api_version=(0, 99))
    monkeypatch.setattr(_ffi, "_C", fake)
    with pytest.raises(ImportError, match=r"built against jaxlib 999\.0\.0.*rebuild jax_fa3"):
        _ffi._check_abi()


def test_same_or_newer_jaxlib_is_accepted(monkeypatch):
    fake = types.SimpleNamespace(built_jaxlib_version=jaxlib.__version__, ffi_api_version=(0, 1))
    monkeypatch.setattr(_ffi, "_C", fake)
    _ffi._check_abi()
    fake.built_jaxlib_version = "0.4.0"
    _ffi._check_abi()
