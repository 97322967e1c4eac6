"""jax_fa3: FlashAttention-3 for JAX.

Hopper (sm_90a) attention kernels registered as XLA FFI custom calls, with a
C++ backend for arrays on the CPU. Public API:

- :func:`flash_attention`: FlashAttention-3's interface (causal, sliding
  window, softcap, MQA/GQA, differentiable LSE).
- :func:`dot_product_attention`: a drop-in for ``jax.nn.dot_product_attention``.
- :func:`ring_attention`: inside ``jax.shard_map``, attention over a sequence
  sharded with its keys and values (ring context parallelism);
  :func:`ring_permutation` orders a sequence for its load-balanced layouts.
- :mod:`jax_fa3.reference`: a pure-JAX float32 reference with the same semantics.
"""

from jax_fa3 import reference
from jax_fa3._ffi import COMPILED_KERNELS, WITH_CUDA, export_disabled_checks
from jax_fa3.attention import RESIDUAL_NAMES, dot_product_attention, flash_attention
from jax_fa3.ring import ring_attention, ring_permutation

__version__ = "0.1.0"

__all__ = [
    "COMPILED_KERNELS",
    "RESIDUAL_NAMES",
    "WITH_CUDA",
    "dot_product_attention",
    "export_disabled_checks",
    "flash_attention",
    "reference",
    "ring_attention",
    "ring_permutation",
]
