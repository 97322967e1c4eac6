"""Flax integration of jax_fa3 (needs ``flax``: ``pip install jax_fa3[flax]``).

- :class:`MultiHeadAttention`: an NNX attention layer (MHA/GQA/MQA, causal,
  sliding window, softcap, KV-cache decoding) on the jax_fa3 kernels, with the
  parameters of ``flax.nnx.MultiHeadAttention``.
- :class:`jax_fa3.flax.linen.MultiHeadAttention`: the same for Linen.
- :data:`attention_fn` / :data:`causal_attention_fn` / :func:`make_attention_fn`:
  ``attention_fn`` adapters for Flax's own attention modules, falling back to
  Flax's attention (with a one-time warning) for what the kernels don't serve.
"""

from jax_fa3.flax import linen
from jax_fa3.flax.adapter import attention_fn, causal_attention_fn, make_attention_fn
from jax_fa3.flax.nnx import MultiHeadAttention

__all__ = ["MultiHeadAttention", "attention_fn", "causal_attention_fn", "linen", "make_attention_fn"]
