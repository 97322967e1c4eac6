"""Ring attention: context parallelism with the keys sharded as well as the queries.

``flash_attention`` on row-sharded arrays gathers the keys and values whole on
every device (all-gather context parallelism). ``ring_attention`` keeps each
device's K/V shard: inside ``jax.shard_map``, the K/V shards travel around the
ring of devices along ``axis_name`` (``ppermute``, issued before each step's
kernel so that XLA can overlap the transfer with it). Every device runs the
kernels on its query rows against each K/V shard in turn and merges the partial
results through their log-sum-exps; shards its mask hides entirely are skipped.
The backward pass walks the ring again with the merged output and LSE, so each
step's kernel computes exact gradient parts: dQ adds up in float32 on its
device, and each K/V shard's dK/dV accumulate in float32 as they travel with
the shard and arrive back at its owner after the last step.

Layouts of the sequence over the ring (device ``i`` of ``n``):

- ``"contiguous"``: device i holds rows ``[i L, (i + 1) L)``. Any mask; under
  a causal mask the last device does ``n`` shards of work and the first one.
- ``"zigzag"``: the sequence in ``2 n`` blocks, device i holds blocks ``i``
  and ``2 n - 1 - i`` (reorder with :func:`zigzag_indices`). Under a causal
  mask every device then does the same work at every step. No mask or causal.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jax_fa3 import _checks, _sharding
from jax_fa3.attention import _first_order, _window

LAYOUTS = ("contiguous", "zigzag")


def zigzag_indices(seqlen: int, num_shards: int) -> np.ndarray:
    """The row order of the ``"zigzag"`` layout: ``perm`` of shape ``[seqlen]``.

    ``jnp.take(x, perm, axis=1)`` reorders a ``[batch, seqlen, ...]`` array so
    that its contiguous shards over ``num_shards`` devices hold blocks ``i``
    and ``2 num_shards - 1 - i`` of ``2 num_shards`` equal blocks;
    ``jnp.take(y, np.argsort(perm), axis=1)`` restores the order.
    ``seqlen`` must be a multiple of ``2 num_shards``.
    """
    for name, value in (("seqlen", seqlen), ("num_shards", num_shards)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if seqlen % (2 * num_shards):
        raise ValueError(f"seqlen ({seqlen}) must be a multiple of 2 * num_shards ({2 * num_shards})")
    blocks = np.arange(seqlen).reshape(2 * num_shards, -1)
    order = [b for i in range(num_shards) for b in (i, 2 * num_shards - 1 - i)]
    return blocks[order].reshape(-1)


# A step's call on one device: which rows of its queries and of the K/V shard
# it covers ("all", "first" or "second" half) and the window on them; None
# where the mask hides the whole shard.
_Call = tuple  # (q_rows, kv_rows, window_left, window_right)


def _rows(x, part: str, axis: int):
    if part == "all":
        return x
    first, second = jnp.split(x, 2, axis=axis)
    return first if part == "first" else second


def _filled_like(like, fill, dtype=jnp.float32):
    """An array of ``fill`` shaped like ``like``, and typed like it: inside
    ``jax.shard_map`` it varies along the mesh axes ``like`` varies along (a
    switch's branches must agree on that, and a constant varies along none)."""
    return jnp.where(True, jnp.asarray(fill, dtype), like.astype(dtype))


def _pad_rows(x, part: str, axis: int, fill):
    """``x`` (the rows of ``part``) back at its place among all rows, ``fill`` elsewhere."""
    if part == "all":
        return x
    pad = _filled_like(x, fill, x.dtype)
    return jnp.concatenate([x, pad] if part == "first" else [pad, x], axis=axis)


@dataclasses.dataclass(frozen=True)
class _Ring:
    """The static description of one ring attention: which call each device makes at each step."""

    axis_name: str | tuple[str, ...]
    n: int
    zigzag: bool
    seqlen_q: int  # this device's rows
    seqlen_k: int
    softmax_scale: float
    softcap: float
    left: int | None  # the window on the whole sequence (None: unbounded)
    right: int | None
    deterministic: bool

    def _contiguous_call(self, i: int, j: int) -> _Call | None:
        lq, lk, n = self.seqlen_q, self.seqlen_k, self.n
        # Query row i lq + a sees key j lk + b where b - a - (lk - lq), the
        # offset from the shard pair's own diagonal, lies in [shift - left, shift + right].
        shift = i * lq - j * lk + n * (lk - lq) - (lk - lq)
        lo = None if self.left is None else shift - self.left
        hi = None if self.right is None else shift + self.right
        if (lo is not None and (lo > lq - 1 or (hi is not None and lo > hi))) or (hi is not None and hi < 1 - lk):
            return None
        full = (lo is None or lo <= 1 - lk) and (hi is None or hi >= lq - 1)
        left, right = (None, None) if full else (None if lo is None else -lo, hi)
        return ("all", "all", *_window(left, right, lq, lk))

    def _zigzag_call(self, i: int, j: int) -> _Call:
        lq, lk = self.seqlen_q, self.seqlen_k
        unmasked = _window(None, None, lq, lk)
        if self.right is None:
            return ("all", "all", *unmasked)
        if j == i:  # blocks (i, 2n-1-i) against themselves: causal on the pair
            return ("all", "all", *_window(None, 0, lq, lk))
        if j < i:  # both query blocks see the shard's first block whole, not its second
            return ("all", "first", *unmasked)
        return ("second", "all", *unmasked)  # only the late query block sees this shard, whole

    def calls(self, step: int) -> list[_Call | None]:
        """The call of each device at ``step``, when it holds the K/V shard of device ``i - step``."""
        call = self._zigzag_call if self.zigzag else self._contiguous_call
        return [call(i, (i - step) % self.n) for i in range(self.n)]

    def index(self):
        return jax.lax.axis_index(self.axis_name)

    def pass_on(self, tree):
        """Each device's ``tree`` sent to the next device on the ring."""
        return jax.lax.ppermute(tree, self.axis_name, [(i, (i + 1) % self.n) for i in range(self.n)])

    def on_device(self, step: int, branch):
        """``f(*arrays)`` running ``branch(call)(*arrays)`` with this device's call at ``step``."""
        calls = self.calls(step)
        distinct = list(dict.fromkeys(calls))
        branches = [branch(call) for call in distinct]
        if len(branches) == 1:
            return branches[0]
        table = jnp.asarray([distinct.index(call) for call in calls], jnp.int32)
        return lambda *arrays: jax.lax.switch(table[self.index()], branches, *arrays)

    # -- forward --------------------------------------------------------------

    def _fwd_branch(self, call: _Call | None):
        def run(q, k, v):
            if call is None:
                return _filled_like(q, 0.0), _filled_like(jnp.swapaxes(q[..., 0], -1, -2), -jnp.inf)
            q_rows, kv_rows, left, right = call
            out, lse = _sharding.fwd(_rows(q, q_rows, -3), _rows(k, kv_rows, -3), _rows(v, kv_rows, -3),
                                     softmax_scale=self.softmax_scale, softcap=self.softcap,
                                     window_left=left, window_right=right)
            return (_pad_rows(out.astype(jnp.float32), q_rows, -3, 0.0),
                    _pad_rows(lse, q_rows, -1, -jnp.inf))

        return run

    def forward(self, q, k, v):
        out = lse = None
        for step in range(self.n):
            if step + 1 < self.n:
                k_next, v_next = self.pass_on((k, v))
            part_out, part_lse = self.on_device(step, self._fwd_branch)(q, k, v)
            out, lse = (part_out, part_lse) if out is None else _merge(out, lse, part_out, part_lse)
            if step + 1 < self.n:
                k, v = k_next, v_next
        return out.astype(q.dtype), lse

    # -- backward -------------------------------------------------------------

    def _bwd_branch(self, call: _Call | None):
        def run(q, k, v, out, dout, lse, dlse):
            if call is None:
                return tuple(_filled_like(x, 0.0) for x in (q, k, v))
            q_rows, kv_rows, left, right = call
            by_rows = [_rows(x, q_rows, -3) for x in (q, out, dout)] + [_rows(x, q_rows, -1) for x in (lse, dlse)]
            sq, so, sdo, slse, sdlse = by_rows
            dq, dk, dv = _sharding.bwd(sq, _rows(k, kv_rows, -3), _rows(v, kv_rows, -3), so, sdo, slse, sdlse,
                                       softmax_scale=self.softmax_scale, softcap=self.softcap,
                                       window_left=left, window_right=right, deterministic=self.deterministic)
            return (_pad_rows(dq.astype(jnp.float32), q_rows, -3, 0.0),
                    _pad_rows(dk.astype(jnp.float32), kv_rows, -3, 0.0),
                    _pad_rows(dv.astype(jnp.float32), kv_rows, -3, 0.0))

        return run

    def backward(self, q, k, v, out, dout, lse, dlse):
        dq = dk = dv = None
        for step in range(self.n):
            if step + 1 < self.n:
                k_next, v_next = self.pass_on((k, v))
            parts = self.on_device(step, self._bwd_branch)(q, k, v, out, dout, lse, dlse)
            if dq is None:
                dq, dk, dv = parts
            else:
                dq, dk, dv = dq + parts[0], dk + parts[1], dv + parts[2]
            # dK/dV travel with their shard; the last hop takes them home.
            dk, dv = self.pass_on((dk, dv))
            if step + 1 < self.n:
                k, v = k_next, v_next
        return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def _merge(out_a, lse_a, out_b, lse_b):
    """Two softmax-normalised partial results (float32) over disjoint keys, as one."""
    lse = jnp.logaddexp(lse_a, lse_b)
    # A row that sees no key in either part keeps out = 0, lse = -inf.
    base = jnp.where(jnp.isneginf(lse), 0.0, lse)

    def weight(part_lse):  # [..., heads, rows] -> [..., rows, heads, 1], as out is laid out
        return jnp.swapaxes(jnp.exp(part_lse - base), -1, -2)[..., None]

    return out_a * weight(lse_a) + out_b * weight(lse_b), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _ring_attention(q, k, v, ring: _Ring):
    return _first_order(ring.forward)(q, k, v)


def _ring_attention_fwd(q, k, v, ring):
    out, lse = _ring_attention(q, k, v, ring)
    return (out, lse), (q, k, v, out, lse)


def _ring_attention_bwd(ring, residuals, cotangents):
    q, k, v, out, lse = residuals
    dout, dlse = cotangents
    return _first_order(ring.backward)(q, k, v, out, dout.astype(out.dtype), lse, dlse.astype(jnp.float32))


_ring_attention.defvjp(_ring_attention_fwd, _ring_attention_bwd)


def _ring_size(axis_name) -> int:
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    if not names or not all(isinstance(name, str) for name in names):
        raise TypeError(f"axis_name must be a mesh axis name or a tuple of them, got {axis_name!r}")
    try:
        return int(jax.lax.psum(1, axis_name))
    except NameError as err:
        raise ValueError(
            f"ring_attention: axis_name {axis_name!r} is not bound here; call ring_attention inside "
            "jax.shard_map (or jax.pmap) over a mesh with that axis, on each device's shard") from err


def ring_attention(q, k, v, axis_name, *, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                   return_lse=False, deterministic=False, layout="contiguous"):
    """Attention over a sequence sharded along the mesh axis ``axis_name``, K/V passed around the ring.

    Call inside ``jax.shard_map`` (or ``jax.pmap``), on each device's shard of
    the sequence; ``axis_name`` (a name or a tuple of names, the first the
    most significant) numbers the devices along the sequence. Batch and heads
    may be sharded over other axes as usual.

    Args:
      q: this device's queries, ``[batch, seqlen_q, heads_q, head_dim]``,
        float16 or bfloat16, rows laid out as ``layout`` says.
      k: this device's keys, ``[batch, seqlen_k, heads_kv, head_dim]``, same
        dtype; ``heads_q`` a multiple of ``heads_kv``.
      v: this device's values, same shape and dtype as ``k``.
      axis_name: the mesh axis (or axes) the sequence is sharded over.
      softmax_scale, causal, window_size, softcap, deterministic: as in
        :func:`jax_fa3.flash_attention`, applied to the whole sequence
        (``n * seqlen_q`` queries, ``n * seqlen_k`` keys for ``n`` devices on
        the ring; masks aligned to its bottom-right corner).
      return_lse: also return the log-sum-exp of this device's rows.
      layout: ``"contiguous"`` (device i holds the i-th of n blocks) or
        ``"zigzag"`` (blocks i and 2n-1-i of 2n, see :func:`zigzag_indices`):
        balances a causal mask; supports causal or no mask, and under the
        causal mask needs ``seqlen_q == seqlen_k``, even.

    Returns:
      ``out`` shaped like ``q``; with ``return_lse=True`` also ``lse``, float32
      ``[batch, heads_q, seqlen_q]``. A row that sees no key gets zeros and
      ``-inf``, as in :func:`jax_fa3.flash_attention`.

    Each step's partial output is rounded to q's dtype by the kernel before
    the float32 merge, one rounding more than a single call on gathered keys.
    """
    _checks.check_qkv(q, k, v)
    scale, softcap, left, right = _checks.resolve_options(
        q.shape[-1], softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap)
    return_lse = _checks.static_bool("return_lse", return_lse)
    deterministic = _checks.static_bool("deterministic", deterministic)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    n = _ring_size(axis_name)
    seqlen_q, seqlen_k = q.shape[1], k.shape[1]
    if layout == "zigzag" and (left, right) != (None, None):
        if (left, right) != (None, 0):
            raise ValueError(f"layout='zigzag' supports causal=True or no mask, got window_size={tuple(window_size)}; "
                             "use layout='contiguous' for a sliding window")
        if seqlen_q != seqlen_k or seqlen_q % 2:
            raise ValueError("layout='zigzag' with causal=True needs equal, even local seqlen_q and seqlen_k, "
                             f"got q.shape={tuple(q.shape)}, k.shape={tuple(k.shape)}")
    # The window clamped on the whole sequence (None: unbounded), as flash_attention takes it.
    whole_q, whole_k = n * seqlen_q, n * seqlen_k
    bound = whole_q + whole_k
    left, right = (None if w is None or w >= bound else w for w in _window(left, right, whole_q, whole_k))
    ring = _Ring(axis_name, n, layout == "zigzag", seqlen_q, seqlen_k, scale, softcap, left, right, deterministic)
    out, lse = _ring_attention(q, k, v, ring)
    return (out, lse) if return_lse else out
