"""The only importer of the native extension ``jax_fa3._C``.

Checks the extension against the running jaxlib, registers the XLA FFI
handlers (platforms ``cpu`` and ``CUDA``, same target names) and wraps the two
custom calls. Everything here works on arrays whose arguments were validated by
:mod:`jax_fa3.attention`.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax import export as jax_export

try:
    from jax_fa3 import _C
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError(
        "jax_fa3's native extension (jax_fa3._C) could not be loaded: "
        f"{err}. Reinstall jax_fa3 from source against the jax you run: "
        "`pip install --no-build-isolation --force-reinstall --no-deps <path to jax_fa3>`."
    ) from err


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _check_abi() -> None:
    """Refuse to load handlers built with newer XLA FFI headers than jaxlib's.

    XLA rejects such handlers only when a backend starts, which shows up as a
    broken JAX rather than an import error, so the check happens here.
    """
    running = jaxlib.__version__
    built = _C.built_jaxlib_version
    if _version(running) < _version(built):
        major, minor = _C.ffi_api_version
        raise ImportError(
            f"jax_fa3 was built against jaxlib {built} (XLA FFI API {major}.{minor}) but "
            f"jaxlib {running} is running; XLA would reject its handlers. Either upgrade "
            f"jax/jaxlib to >= {built}, or rebuild jax_fa3 against the running jaxlib: "
            "`pip install --no-build-isolation --force-reinstall --no-deps <path to jax_fa3>`."
        )


_check_abi()

for _platform, _targets in _C.registrations().items():
    for _name, _capsule in _targets.items():
        jax.ffi.register_ffi_target(_name, _capsule, platform=_platform)

#: The custom-call targets the calls lower to (the extension registers exactly these).
FWD_TARGET, BWD_TARGET = "jax_fa3_fwd", "jax_fa3_bwd"


def export_disabled_checks() -> list:
    """The ``disabled_checks`` that let ``jax.export`` serialize code calling jax_fa3.

    ``jax.export.export(fn, disabled_checks=jax_fa3.export_disabled_checks())``:
    jax refuses custom calls without its compatibility guarantee by default.
    The exported program calls jax_fa3's targets by name, so it runs where a
    jax_fa3 with the same calls is installed and imported (no guarantee across
    jax_fa3 versions). Lowering for several platforms (``platforms=("cpu",
    "cuda")``) works: both register the same targets.
    """
    return [jax_export.DisabledSafetyCheck.custom_call(target) for target in (FWD_TARGET, BWD_TARGET)]


#: Whether the CUDA kernels were compiled into this build.
WITH_CUDA: bool = bool(_C.with_cuda)
#: (dtype name, head-dim bucket) pairs with compiled CUDA kernels.
COMPILED_KERNELS: tuple[tuple[str, int], ...] = tuple(_C.compiled_kernels())

# vmap: every operand gets the batch dimension (broadcast where unbatched) and
# the handlers fold all leading dimensions into the batch. Results keep the
# leading dimensions, so the rule composes under nested vmap.
_VMAP_METHOD = "broadcast_all"


def _result_type(like, shape, dtype, spec=None):
    """The type of a custom-call result, typed along the same lines as ``like``.

    ``spec``: where the sharding is part of the type (jax's explicit sharding
    mode), the result's PartitionSpec on ``like``'s mesh.

    Inside ``jax.shard_map`` (with its type check on) an FFI call's results
    must say along which mesh axes they vary, as its operands do; a plain
    ShapeDtypeStruct says "none". Deriving the result from ``like``'s abstract
    value keeps that typing, whatever jax calls it. Only done when ``like``
    has no sharded dimension, so no per-dimension sharding is carried over to
    a result of another shape.
    """
    aval = jax.typeof(like) if hasattr(jax, "typeof") else None
    sharding = getattr(aval, "sharding", None)
    if spec is None and sharding is not None and all(axis is None for axis in sharding.spec):
        spec = jax.sharding.PartitionSpec()  # like is whole: so is the result, on like's mesh
    if spec is None:
        return jax.ShapeDtypeStruct(shape, dtype)
    return aval.update(shape=tuple(shape), dtype=jnp.dtype(dtype), weak_type=False,
                       sharding=jax.sharding.NamedSharding(sharding.mesh, spec))


def _attrs(softmax_scale: float, softcap: float, window_left: int, window_right: int) -> dict:
    return dict(
        softmax_scale=np.float32(softmax_scale),
        softcap=np.float32(softcap),
        window_left=np.int32(window_left),
        window_right=np.int32(window_right),
    )


def fwd(q, k, v, *, softmax_scale, softcap, window_left, window_right, result_specs=(None, None)):
    """Forward custom call: returns ``out`` (like q) and ``lse`` float32 ``[..., heads_q, seqlen_q]``.

    ``result_specs``: out's and lse's PartitionSpecs where shardings are types.
    """
    *lead, seqlen_q, heads_q, _ = q.shape
    # Scratch for the kernels' tile counter: a constant size (vmap prepends
    # dimensions, which only makes it larger).
    workspace = _result_type(q, (_C.fwd_workspace_bytes,), jnp.uint8)
    out_spec, lse_spec = result_specs
    out_types = (_result_type(q, q.shape, q.dtype, out_spec),
                 _result_type(q, (*lead, heads_q, seqlen_q), jnp.float32, lse_spec), workspace)
    call = jax.ffi.ffi_call(FWD_TARGET, out_types, vmap_method=_VMAP_METHOD)
    out, lse, _ = call(q, k, v, **_attrs(softmax_scale, softcap, window_left, window_right))
    return out, lse


def _workspace_bytes_per_batch(q, k, deterministic: bool) -> int:
    *_, seqlen_q, heads_q, head_dim = q.shape
    seqlen_k, heads_kv = k.shape[-3], k.shape[-2]
    nbytes = _C.bwd_workspace_bytes(1, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, deterministic)
    return -(-nbytes // 256) * 256


def bwd(q, k, v, out, dout, lse, dlse, *, softmax_scale, softcap, window_left, window_right, deterministic,
        with_dlse=True, result_specs=(None, None)):
    """Backward custom call: returns ``dq, dk, dv`` (like q, k, v).

    ``with_dlse=False``: lse's cotangent is zero and ``dlse`` (any array of
    lse's shape, e.g. lse itself) is not read, so no zeros need to exist.
    ``result_specs``: dq's and dk's / dv's PartitionSpecs where shardings are types.
    """
    lead = q.shape[:-3]
    # The workspace is sized per batch element so it scales under vmap, which
    # prepends dimensions to every result.
    workspace = _result_type(q, (*lead, _workspace_bytes_per_batch(q, k, deterministic)), jnp.uint8)
    dq_spec, dkv_spec = result_specs
    out_types = (_result_type(q, q.shape, q.dtype, dq_spec), _result_type(k, k.shape, k.dtype, dkv_spec),
                 _result_type(v, v.shape, v.dtype, dkv_spec), workspace)
    call = jax.ffi.ffi_call(BWD_TARGET, out_types, vmap_method=_VMAP_METHOD)
    dq, dk, dv, _ = call(
        q, k, v, out, dout, lse, dlse,
        **_attrs(softmax_scale, softcap, window_left, window_right),
        deterministic=bool(deterministic),
        with_dlse=bool(with_dlse),
    )
    return dq, dk, dv
