"""``jax_fa3.flax.MultiHeadAttention``: a Flax NNX attention layer on the jax_fa3 kernels."""

from __future__ import annotations

import functools

import jax.numpy as jnp
from flax import nnx

from jax_fa3.flax import _core

_data = getattr(nnx, "data", lambda x: x)


class MultiHeadAttention(nnx.Module):
    """Multi-head attention (MHA, GQA, MQA) computed by the jax_fa3 kernels.

    Mirrors :class:`flax.nnx.MultiHeadAttention`: the same sub-modules and
    parameters (``query``, ``key``, ``value``, ``out`` :class:`nnx.LinearGeneral`,
    optional ``query_ln``/``key_ln``) and the same cache variables
    (``cached_key``, ``cached_value``, ``cache_index``), so states can be moved
    between the two. Shapes: ``query`` kernel ``[in_features, num_heads,
    head_dim]``, ``key``/``value`` kernels ``[in_kv_features, num_kv_heads,
    head_dim]``, ``out`` kernel ``[num_heads, head_dim, out_features]``, with
    ``head_dim = qkv_features // num_heads``.

    Args:
      num_heads: number of query heads.
      in_features: features of ``inputs_q``.
      qkv_features: total query (and key/value per kv head) width; defaults to
        ``in_features``. ``head_dim`` must be a multiple of 8, at most 256.
      out_features: output features; defaults to ``in_features``.
      num_kv_heads: key/value heads (GQA/MQA); defaults to ``num_heads`` and
        must divide it.
      in_kv_features: features of ``inputs_k``/``inputs_v``; defaults to
        ``in_features``.
      causal: causal mask, bottom-right aligned like
        :func:`jax_fa3.flash_attention` (for self-attention: query ``i`` sees
        keys ``j <= i``).
      window_size: ``(left, right)`` sliding window around the (bottom-right)
        diagonal, ``-1`` unbounded.
      softcap: when ``> 0``, scores ``s`` become ``softcap * tanh(s / softcap)``.
      dtype: computation dtype of the projections (default: inferred from the
        inputs and parameters, as in Flax).
      param_dtype: parameter dtype (float32 by default).
      attention_dtype: the kernels compute in float16/bfloat16 only. When q/k/v
        (i.e. ``dtype``) are float16/bfloat16 the attention runs in that dtype;
        otherwise (a float32 module) q/k/v are cast to ``attention_dtype``
        (bfloat16 by default) for the attention core alone, whose output is
        cast back: the projections, parameters and gradients stay float32
        (mixed precision, as FlashAttention under autocast). Pass ``None`` to
        forbid the cast: a float32 module then raises a ``TypeError``.
      dropout_rate: must be 0.0: attention dropout is not supported by the
        kernels, and a positive rate raises a ``ValueError``.
      precision: precision of the projections' matmuls.
      kernel_init, out_kernel_init, bias_init, out_bias_init, use_bias: as in
        :class:`flax.nnx.MultiHeadAttention`.
      normalize_qk: apply LayerNorm (no bias) to q and k per head, as Flax.
      decode: default for ``__call__``'s ``decode`` (KV-cache decoding).
      implementation: ``"jax_fa3"`` (default), or ``"xla"``/``"cudnn"`` to run
        the same module on ``jax.nn.dot_product_attention`` for comparisons
        (no softcap; causal/window only for equal query and key lengths).
      ring_axis_name: for a module called inside ``jax.shard_map`` on a shard
        of the sequence: the mesh axis (or axes) the sequence is sharded over.
        The attention then runs :func:`jax_fa3.ring_attention` over the whole
        sequence (masks on the whole sequence); without it each device would
        attend within its own shard only. Not with ``decode``.
      ring_layout: the sequence's layout over the ring (``"contiguous"``,
        ``"zigzag"``, ``"striped"``; see :func:`jax_fa3.ring_attention`).
      rngs: :class:`nnx.Rngs` for the parameter initialisers.

    Decoding (``decode=True``, after :meth:`init_cache`): each call appends its
    ``L >= 1`` tokens to the cache at ``cache_index`` and attends them to the
    cache slots filled so far (causal within the new tokens when ``causal``).
    The slots are a static ``max_length`` while the filled prefix is dynamic, so
    this step does not run on the kernels: it is computed in plain JAX (float32
    scores and softmax, ``O(L * max_length)`` per head), exact for the filled
    prefix and cheap for one token at a time. A prompt that starts a sequence
    runs on the kernels with ``prefill=True``. Writing past ``max_length`` is
    not checked (as in Flax).
    """

    def __init__(
        self,
        num_heads: int,
        in_features: int,
        qkv_features: int | None = None,
        out_features: int | None = None,
        num_kv_heads: int | None = None,
        in_kv_features: int | None = None,
        *,
        causal: bool = False,
        window_size: tuple[int, int] = (-1, -1),
        softcap: float = 0.0,
        dtype=None,
        param_dtype=jnp.float32,
        attention_dtype=jnp.bfloat16,
        dropout_rate: float = 0.0,
        precision=None,
        kernel_init=nnx.nn.linear.default_kernel_init,
        out_kernel_init=None,
        bias_init=nnx.initializers.zeros_init(),
        out_bias_init=None,
        use_bias: bool = True,
        normalize_qk: bool = False,
        decode: bool = False,
        implementation: str = "jax_fa3",
        ring_axis_name: str | tuple[str, ...] | None = None,
        ring_layout: str = "contiguous",
        rngs: nnx.Rngs,
    ):
        self.num_kv_heads, self.window_size = _core.check_options(
            num_heads=num_heads, num_kv_heads=num_kv_heads, dropout_rate=dropout_rate, causal=causal,
            window_size=window_size, softcap=softcap, attention_dtype=attention_dtype,
            implementation=implementation, ring_axis_name=ring_axis_name, ring_layout=ring_layout)
        self.num_heads = num_heads
        self.in_features = in_features
        self.qkv_features = in_features if qkv_features is None else qkv_features
        self.out_features = in_features if out_features is None else out_features
        self.in_kv_features = in_features if in_kv_features is None else in_kv_features
        if self.qkv_features % num_heads:
            raise ValueError(f"qkv_features ({self.qkv_features}) must be divisible by num_heads ({num_heads})")
        self.head_dim = self.qkv_features // num_heads
        self.causal = causal
        self.softcap = float(softcap)
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.attention_dtype = attention_dtype
        self.dropout_rate = dropout_rate
        self.normalize_qk = normalize_qk
        self.decode = decode
        self.implementation = implementation
        self.ring_axis_name, self.ring_layout = ring_axis_name, ring_layout

        linear = functools.partial(nnx.LinearGeneral, dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init,
                                   bias_init=bias_init, use_bias=use_bias, precision=precision, rngs=rngs)
        self.query = linear(in_features, (num_heads, self.head_dim))
        self.key = linear(self.in_kv_features, (self.num_kv_heads, self.head_dim))
        self.value = linear(self.in_kv_features, (self.num_kv_heads, self.head_dim))
        if normalize_qk:
            norm = functools.partial(nnx.LayerNorm, self.head_dim, use_bias=False, dtype=dtype,
                                     param_dtype=param_dtype, rngs=rngs)
            self.query_ln, self.key_ln = norm(), norm()
        else:
            self.query_ln = self.key_ln = _data(None)
        self.out = nnx.LinearGeneral(
            (num_heads, self.head_dim), self.out_features, axis=(-2, -1), dtype=dtype, param_dtype=param_dtype,
            kernel_init=out_kernel_init or kernel_init, bias_init=out_bias_init or bias_init, use_bias=use_bias,
            precision=precision, rngs=rngs)
        self.cached_key = self.cached_value = self.cache_index = _data(None)

    def init_cache(self, input_shape, dtype=None):
        """Allocates an empty KV cache for inputs of ``input_shape = (batch..., max_length, features)``.

        ``dtype`` defaults to the module's ``dtype`` (else ``param_dtype``).
        The cache holds ``[batch..., max_length, num_kv_heads, head_dim]`` keys and values.
        """
        dtype = dtype or self.dtype or self.param_dtype
        shape = (*input_shape[:-1], self.num_kv_heads, self.head_dim)
        self.cached_key = nnx.Cache(jnp.zeros(shape, dtype))
        self.cached_value = nnx.Cache(jnp.zeros(shape, dtype))
        self.cache_index = nnx.Cache(jnp.array(0, jnp.int32))

    def __call__(self, inputs_q, inputs_k=None, inputs_v=None, *, mask=None, deterministic=None, rngs=None,
                 decode: bool | None = None, is_causal: bool = False, prefill: bool = False):
        """Attention of ``inputs_q`` ``[batch..., Lq, in_features]`` over ``inputs_k``/``inputs_v``.

        ``inputs_k``/``inputs_v``: ``[batch..., Lk, in_kv_features]``; both
        default to ``inputs_q`` (self-attention), ``inputs_v`` to ``inputs_k``.
        ``is_causal=True`` adds the causal mask for this call (as Flax's
        ``is_causal``). ``mask`` must be None: arbitrary masks are not served
        by the kernels. ``deterministic`` and ``rngs`` are accepted for
        compatibility and unused (there is no dropout). ``decode`` overrides
        the module's. ``prefill=True`` (when decoding) starts a new sequence:
        the tokens fill the cache from slot 0 and attend to each other on the
        kernels, instead of the plain-JAX attention to every cache slot.
        Returns ``[batch..., Lq, out_features]``.
        """
        del deterministic, rngs
        inputs_q, inputs_k, inputs_v = _core.resolve_inputs(
            "jax_fa3.flax.MultiHeadAttention", "flax.nnx.MultiHeadAttention", inputs_q, inputs_k, inputs_v, mask)
        if inputs_q.shape[-1] != self.in_features:
            raise ValueError(f"inputs_q has {inputs_q.shape[-1]} features, the module expects {self.in_features}")
        query, key, value = self.query(inputs_q), self.key(inputs_k), self.value(inputs_v)
        if self.normalize_qk:
            query, key = self.query_ln(query), self.key_ln(key)
        causal = self.causal or is_causal
        options = dict(causal=causal, window_size=self.window_size, softcap=self.softcap,
                       attention_dtype=self.attention_dtype)
        if self.decode if decode is None else decode:
            _core.check_no_ring_decode(self.ring_axis_name)
            if self.cached_key is None:
                raise ValueError("decode=True needs a KV cache: call init_cache(input_shape) first")
            start = 0 if prefill else self.cache_index[...]
            cached_key, cached_value = _core.write_cache(self.cached_key[...], self.cached_value[...], start, key,
                                                         value, query.shape[-3])
            self.cached_key[...] = cached_key
            self.cached_value[...] = cached_value
            self.cache_index[...] = jnp.asarray(start + query.shape[-3], jnp.int32)
            if prefill:  # the new sequence is these tokens alone: on the kernels
                x = _core.attend(query, key, value, implementation=self.implementation, **options)
            else:
                x = _core.attend_cached(query, cached_key, cached_value, start, **options)
        else:
            _core.check_prefill_decodes(prefill)
            x = _core.attend(query, key, value, implementation=self.implementation,
                             ring_axis_name=self.ring_axis_name, ring_layout=self.ring_layout, **options)
        return self.out(x)
