"""``jax_fa3.flax.linen.MultiHeadAttention``: a Flax Linen attention layer on the jax_fa3 kernels."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax.numpy as jnp
from flax import linen as nn

from jax_fa3.flax import _core
from jax_fa3.flax.adapter import attention_fn, causal_attention_fn, make_attention_fn

__all__ = ["MultiHeadAttention", "attention_fn", "causal_attention_fn", "make_attention_fn"]


class MultiHeadAttention(nn.Module):
    """Multi-head attention (MHA, GQA, MQA) computed by the jax_fa3 kernels (Linen).

    Mirrors :class:`flax.linen.MultiHeadDotProductAttention`: parameters
    ``query`` ``[features, num_heads, head_dim]``, ``key``/``value``
    ``[features_kv, num_kv_heads, head_dim]``, ``out`` ``[num_heads, head_dim,
    out_features]`` (:class:`nn.DenseGeneral`), optional ``query_ln``/``key_ln``;
    cache collection ``"cache"`` with ``cached_key``, ``cached_value``,
    ``cache_index``. Call with ``inputs_q`` ``[batch..., Lq, features]`` and
    optional ``inputs_k``/``inputs_v`` ``[batch..., Lk, features_kv]``;
    returns ``[batch..., Lq, out_features]``.

    Attributes are those of :class:`jax_fa3.flax.MultiHeadAttention` (NNX):
    ``num_heads``, ``num_kv_heads``, ``qkv_features``, ``out_features``,
    ``causal`` (bottom-right aligned), ``window_size``, ``softcap``, ``dtype``,
    ``param_dtype``, ``attention_dtype`` (float32 q/k/v are cast to it, bfloat16
    by default, for the attention core only; None raises instead),
    ``dropout_rate`` (must be 0: a positive rate raises), ``precision``,
    initialisers, ``use_bias``, ``normalize_qk``, ``decode``, ``implementation``,
    ``ring_axis_name`` and ``ring_layout`` (ring attention inside ``shard_map``).

    Decoding (``decode=True``): initialise with full-length inputs
    ``[batch..., max_length, features]`` (``init`` allocates an empty cache of
    that length), then apply with ``mutable=["cache"]`` and ``L >= 1`` new
    tokens per call. The new tokens attend to the filled cache slots, computed in
    plain JAX (float32 scores) since the filled length is dynamic; see the NNX
    module's docstring. ``prefill=True`` in a call starts a new sequence with
    its tokens (cache slots from 0), computed on the kernels.
    """

    num_heads: int
    num_kv_heads: int | None = None
    qkv_features: int | None = None
    out_features: int | None = None
    causal: bool = False
    window_size: tuple[int, int] = (-1, -1)
    softcap: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32
    attention_dtype: Any = jnp.bfloat16
    dropout_rate: float = 0.0
    deterministic: bool | None = None  # accepted for compatibility; there is no dropout
    precision: Any = None
    kernel_init: Callable = nn.linear.default_kernel_init
    out_kernel_init: Callable | None = None
    bias_init: Callable = nn.initializers.zeros_init()
    out_bias_init: Callable | None = None
    use_bias: bool = True
    normalize_qk: bool = False
    decode: bool = False
    implementation: str = "jax_fa3"
    ring_axis_name: str | tuple[str, ...] | None = None
    ring_layout: str = "contiguous"

    def __post_init__(self):
        _core.check_options(num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                            dropout_rate=self.dropout_rate, causal=self.causal, window_size=self.window_size,
                            softcap=self.softcap, attention_dtype=self.attention_dtype,
                            implementation=self.implementation, ring_axis_name=self.ring_axis_name,
                            ring_layout=self.ring_layout)
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs_q, inputs_k=None, inputs_v=None, *, mask=None, deterministic=None,
                 prefill: bool = False):
        del deterministic
        inputs_q, inputs_k, inputs_v = _core.resolve_inputs(
            "jax_fa3.flax.linen.MultiHeadAttention", "nn.MultiHeadDotProductAttention", inputs_q, inputs_k,
            inputs_v, mask)
        # The options were validated in __post_init__.
        num_kv_heads = self.num_heads if self.num_kv_heads is None else self.num_kv_heads
        window_size = tuple(self.window_size)
        features = self.out_features or inputs_q.shape[-1]
        qkv_features = self.qkv_features or inputs_q.shape[-1]
        if qkv_features % self.num_heads:
            raise ValueError(f"qkv_features ({qkv_features}) must be divisible by num_heads ({self.num_heads})")
        head_dim = qkv_features // self.num_heads
        dense = functools.partial(nn.DenseGeneral, axis=-1, dtype=self.dtype, param_dtype=self.param_dtype,
                                  kernel_init=self.kernel_init, bias_init=self.bias_init, use_bias=self.use_bias,
                                  precision=self.precision)
        query = dense(features=(self.num_heads, head_dim), name="query")(inputs_q)
        key = dense(features=(num_kv_heads, head_dim), name="key")(inputs_k)
        value = dense(features=(num_kv_heads, head_dim), name="value")(inputs_v)
        if self.normalize_qk:
            norm = functools.partial(nn.LayerNorm, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
            query, key = norm(name="query_ln")(query), norm(name="key_ln")(key)

        options = dict(causal=self.causal, window_size=window_size, softcap=self.softcap,
                       attention_dtype=self.attention_dtype)
        if self.decode:
            _core.check_no_ring_decode(self.ring_axis_name)
        if self.decode and self.has_variable("cache", "cached_key"):
            cached_key = self.variable("cache", "cached_key")
            cached_value = self.variable("cache", "cached_value")
            cache_index = self.variable("cache", "cache_index")
            start = 0 if prefill else cache_index.value
            cached_key.value, cached_value.value = _core.write_cache(cached_key.value, cached_value.value, start, key,
                                                                     value, query.shape[-3])
            cache_index.value = jnp.asarray(start + query.shape[-3], jnp.int32)
            if prefill:  # the new sequence is these tokens alone: on the kernels
                x = _core.attend(query, key, value, implementation=self.implementation, **options)
            else:
                x = _core.attend_cached(query, cached_key.value, cached_value.value, start, **options)
        else:
            if not self.decode:
                _core.check_prefill_decodes(prefill)
            if self.decode:  # initialisation: allocate the empty cache, sized by these full-length inputs
                self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
                self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
                self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            x = _core.attend(query, key, value, implementation=self.implementation,
                             ring_axis_name=self.ring_axis_name, ring_layout=self.ring_layout, **options)
        return nn.DenseGeneral(features=features, axis=(-2, -1), kernel_init=self.out_kernel_init or self.kernel_init,
                               bias_init=self.out_bias_init or self.bias_init, use_bias=self.use_bias,
                               dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
                               name="out")(x)
