"""Ring attention: context parallelism with the keys sharded as well as the queries.

``flash_attention`` on row-sharded arrays gathers the keys and values whole on
every device (all-gather context parallelism). ``ring_attention`` keeps each
device's K/V shard: inside ``jax.shard_map``, the K/V shards travel around the
ring of devices along ``axis_name`` (``ppermute``, issued before each step's
kernel so that XLA can overlap the transfer with it). Every device runs the
kernels on its query rows against each K/V shard in turn and merges the partial
results through their log-sum-exps; shards its mask hides entirely are skipped,
and steps where no device has work (a sliding window sees only the neighbouring
shards) are not taken: K/V jump over them in one transfer.
The backward pass walks the ring again with the merged output and LSE, so each
step's kernel computes exact gradient parts: dQ adds up in float32 on its
device, and each K/V shard's dK/dV accumulate in float32 as they travel with
the shard and arrive back at its owner after the last step.

Layouts of the sequence over the ring (device ``i`` of ``n``):

- ``"contiguous"``: device i holds rows ``[i L, (i + 1) L)``. Any mask; under
  a causal mask device i computes i whole shard pairs and half the diagonal one.
- ``"zigzag"``: the sequence in ``2 n`` blocks, device i holds blocks ``i``
  and ``2 n - 1 - i``. Under a causal mask every device does the same work at
  every step: one causal step, then half a shard pair a step.
- ``"striped"``: device i holds rows ``i, i + n, i + 2 n, ...``. Under a
  causal mask every device runs the same causal call at every step, on rows
  moved by one where its shard comes later, so that no step needs a switch.
Zigzag and striped support causal or no mask; :func:`ring_permutation` gives
their row orders.

Where devices differ in the call they run at a step (contiguous and zigzag
under a mask), a ``lax.switch`` on the device index picks it; XLA:GPU runs a
switch outside command buffers by copying the index to the host and waiting
for the stream (its ConditionalThunk), a host round trip per step.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import custom_vjp_primal_tree_values

from jax_fa3 import _checks, _sharding
from jax_fa3.attention import _first_order, _window, named_residuals, output_cotangents

LAYOUTS = ("contiguous", "zigzag", "striped")

# The log-sum-exp given to a row that must take no part in a backward call:
# every probability exp(s - lse) of the row is then 0 (finite, so that no
# inf - inf can arise in the kernels).
_NO_ROW_LSE = 1e30


def ring_permutation(seqlen: int, num_shards: int, layout: str) -> np.ndarray:
    """The order of a sequence's rows in a ``ring_attention`` layout: ``perm``, int ``[seqlen]``.

    ``jnp.take(x, perm, axis=1)`` reorders a ``[batch, seqlen, ...]`` array so
    that its contiguous shards over ``num_shards`` devices hold what
    ``layout`` says; ``jnp.take(y, np.argsort(perm), axis=1)`` restores the
    order. ``"zigzag"``: device i gets blocks ``i`` and ``2 num_shards - 1 - i``
    of ``2 num_shards``; ``seqlen`` a multiple of ``2 num_shards``.
    ``"striped"``: device i gets rows ``i, i + num_shards, i + 2 num_shards, ...``.
    ``"contiguous"``: the identity. Except for zigzag, ``seqlen`` a multiple of
    ``num_shards``.
    """
    for name, value in (("seqlen", seqlen), ("num_shards", num_shards)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    blocks = 2 * num_shards if layout == "zigzag" else num_shards
    if seqlen % blocks:
        raise ValueError(
            f"seqlen ({seqlen}) must be a multiple of {blocks} for layout={layout!r} on {num_shards} shards")
    rows = np.arange(seqlen)
    if layout == "striped":
        return rows.reshape(-1, num_shards).T.reshape(-1)
    if layout == "zigzag":
        order = [b for i in range(num_shards) for b in (i, 2 * num_shards - 1 - i)]
        return rows.reshape(2 * num_shards, -1)[order].reshape(-1)
    return rows


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


def _shift_rows(x, by: int, axis: int, fill):
    """``x`` with its rows moved by ``by`` (+1: down, -1: up) along ``axis``; the row left empty holds ``fill``."""
    edge = _filled_like(jax.lax.slice_in_dim(x, 0, 1, axis=axis), fill, x.dtype)
    if by == 1:
        return jnp.concatenate([edge, jax.lax.slice_in_dim(x, 0, x.shape[axis] - 1, axis=axis)], axis=axis)
    return jnp.concatenate([jax.lax.slice_in_dim(x, 1, x.shape[axis], axis=axis), edge], axis=axis)


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
    layout: str
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

    def _striped_call(self, i: int, j: int) -> _Call:
        # Row a of device i is row a n + i of the sequence: under the causal
        # mask it sees key b n + j for b <= a where j <= i, for b < a where
        # j > i: the same causal call, on rows moved down by one (late_rows).
        lq, lk = self.seqlen_q, self.seqlen_k
        return ("all", "all", *_window(None, self.right, lq, lk))

    def calls(self, step: int) -> list[_Call | None]:
        """The call of each device at ``step``, when it holds the K/V shard of device ``i - step``."""
        call = {"contiguous": self._contiguous_call, "zigzag": self._zigzag_call, "striped": self._striped_call}
        return [call[self.layout](i, (i - step) % self.n) for i in range(self.n)]

    def late_rows(self, step: int):
        """Striped under the causal mask: whether this device's rows see one key fewer of the shard it holds at
        ``step`` (a traced bool), or None where that never happens. The choice is data, not a switch."""
        if self.layout != "striped" or self.right is None:
            return None
        late = [(i - step) % self.n > i for i in range(self.n)]
        return jnp.asarray(late)[self.index()] if any(late) else None

    def index(self):
        return jax.lax.axis_index(self.axis_name)

    def pass_on(self, tree, hops: int):
        """Each device's ``tree`` sent ``hops`` devices on along the ring (one transfer, whatever the hops)."""
        if hops % self.n == 0:
            return tree
        return jax.lax.ppermute(tree, self.axis_name, [(i, (i + hops) % self.n) for i in range(self.n)])

    def steps(self) -> list[int]:
        """The steps at which some device's mask sees some of the shard it holds. A sliding window needs only
        the shards next to a device's own: the others are skipped, K/V jumping over them in one transfer.
        Step 0 is always there: the last query row sees the last key (masks are bottom-right aligned), and in
        every layout the device holding that row holds that key."""
        return [step for step in range(self.n) if any(call is not None for call in self.calls(step))]

    def on_device(self, step: int, branch):
        """``f(*arrays)`` running ``branch(call, step)(*arrays)`` with this device's call at ``step``: a switch
        on the device index where devices differ."""
        calls = self.calls(step)
        distinct = list(dict.fromkeys(calls))
        branches = [branch(call, step) for call in distinct]
        if len(branches) == 1:
            return branches[0]
        table = jnp.asarray([distinct.index(call) for call in calls], jnp.int32)
        return lambda *arrays: jax.lax.switch(table[self.index()], branches, *arrays)

    # -- forward --------------------------------------------------------------

    def _fwd_branch(self, call: _Call | None, step: int):
        def run(q, k, v):
            if call is None:
                return _filled_like(q, 0.0), _filled_like(jnp.swapaxes(q[..., 0], -1, -2), -jnp.inf)
            q_rows, kv_rows, left, right = call
            late = self.late_rows(step)
            if late is not None:  # row a + 1 computed as row a; the first sees no key of this shard
                q = jnp.where(late, _shift_rows(q, -1, -3, 0), q)
            out, lse = _sharding.fwd(_rows(q, q_rows, -3), _rows(k, kv_rows, -3), _rows(v, kv_rows, -3),
                                     softmax_scale=self.softmax_scale, softcap=self.softcap,
                                     window_left=left, window_right=right)
            out, lse = _pad_rows(out.astype(jnp.float32), q_rows, -3, 0.0), _pad_rows(lse, q_rows, -1, -jnp.inf)
            if late is not None:
                out = jnp.where(late, _shift_rows(out, 1, -3, 0.0), out)
                lse = jnp.where(late, _shift_rows(lse, 1, -1, -jnp.inf), lse)
            return out, lse

        return run

    def forward(self, q, k, v):
        steps = self.steps()
        out = lse = None
        for step, following in zip(steps, steps[1:] + [None]):
            if following is not None:  # issued before this step's kernel, so that the two can overlap
                k_next, v_next = self.pass_on((k, v), following - step)
            part_out, part_lse = self.on_device(step, self._fwd_branch)(q, k, v)
            out, lse = (part_out, part_lse) if out is None else _merge(out, lse, part_out, part_lse)
            if following is not None:
                k, v = k_next, v_next
        return out.astype(q.dtype), lse

    # -- backward -------------------------------------------------------------

    def _bwd_branch(self, call: _Call | None, step: int):
        def run(q, k, v, out, dout, lse, dlse):
            if call is None:
                return tuple(_filled_like(x, 0.0) for x in (q, k, v))
            q_rows, kv_rows, left, right = call
            late = self.late_rows(step)
            if late is not None:  # as in the forward; the row moved in at the end takes no part: its lse makes
                # every probability of the row 0
                q, out, dout = (jnp.where(late, _shift_rows(x, -1, -3, 0), x) for x in (q, out, dout))
                lse = jnp.where(late, _shift_rows(lse, -1, -1, _NO_ROW_LSE), lse)
                if dlse is not None:
                    dlse = jnp.where(late, _shift_rows(dlse, -1, -1, 0.0), dlse)
            sq, so, sdo = (_rows(x, q_rows, -3) for x in (q, out, dout))
            slse = _rows(lse, q_rows, -1)
            sdlse = None if dlse is None else _rows(dlse, q_rows, -1)
            dq, dk, dv = _sharding.bwd(sq, _rows(k, kv_rows, -3), _rows(v, kv_rows, -3), so, sdo, slse, sdlse,
                                       softmax_scale=self.softmax_scale, softcap=self.softcap,
                                       window_left=left, window_right=right, deterministic=self.deterministic)
            dq = _pad_rows(dq.astype(jnp.float32), q_rows, -3, 0.0)
            if late is not None:
                dq = jnp.where(late, _shift_rows(dq, 1, -3, 0.0), dq)
            return (dq,
                    _pad_rows(dk.astype(jnp.float32), kv_rows, -3, 0.0),
                    _pad_rows(dv.astype(jnp.float32), kv_rows, -3, 0.0))

        return run

    def backward(self, q, k, v, out, dout, lse, dlse):
        steps = self.steps()
        dq = dk = dv = None
        for step, following in zip(steps, steps[1:] + [None]):
            if following is not None:
                k_next, v_next = self.pass_on((k, v), following - step)
            parts = self.on_device(step, self._bwd_branch)(q, k, v, out, dout, lse, dlse)
            if dq is None:
                dq, dk, dv = parts
            else:
                dq, dk, dv = dq + parts[0], dk + parts[1], dv + parts[2]
            # dK/dV travel with their shard; after the last step they go home (the shard of device i - step).
            dk, dv = self.pass_on((dk, dv), (following if following is not None else self.n) - step)
            if following is not None:
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
    q, k, v = custom_vjp_primal_tree_values((q, k, v))  # symbolic_zeros: they come as CustomVJPPrimal records
    out, lse = named_residuals(*_ring_attention(q, k, v, ring))
    return (out, lse), (q, k, v, out, lse)


def _ring_attention_bwd(ring, residuals, cotangents):
    q, k, v, out, lse = residuals
    dout, dlse = output_cotangents(out, *cotangents)
    return _first_order(ring.backward)(q, k, v, out, dout, lse, dlse)


_ring_attention.defvjp(_ring_attention_fwd, _ring_attention_bwd, symbolic_zeros=True)


def _ring_size(axis_name) -> int:
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    if not names or not all(isinstance(name, str) for name in names):
        raise TypeError(f"axis_name must be a mesh axis name or a tuple of them, got {axis_name!r}")
    try:
        return int(jax.lax.psum(1, axis_name))
    except NameError as err:
        raise ValueError(
            f"ring_attention: axis_name {axis_name!r} is not bound here; call ring_attention inside "
            "jax.shard_map (or jax.pmap, or jax.vmap with that axis_name) over a mesh with that axis, on each "
            "device's shard") from err


def ring_attention(q, k, v, axis_name, *, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                   return_lse=False, deterministic=False, layout="contiguous"):
    """Attention over a sequence sharded along the mesh axis ``axis_name``, K/V passed around the ring.

    Call inside ``jax.shard_map`` (or ``jax.pmap``, or ``jax.vmap`` with an
    ``axis_name``, which runs a ring on one device), on each device's shard of
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
      layout: how the sequence's rows are spread over the devices:
        ``"contiguous"`` (device i holds the i-th of n blocks; any mask),
        ``"zigzag"`` (blocks i and 2n-1-i of 2n) or ``"striped"`` (rows i,
        i + n, ...): these two balance a causal mask, support causal or no
        mask, and under the causal mask need ``seqlen_q == seqlen_k`` (even
        for zigzag). :func:`ring_permutation` gives their row orders.

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
    # The window clamped on the whole sequence (None: unbounded), as flash_attention takes it.
    whole_q, whole_k = n * seqlen_q, n * seqlen_k
    bound = whole_q + whole_k
    left, right = (None if w is None or w >= bound else w for w in _window(left, right, whole_q, whole_k))
    if layout != "contiguous" and (left, right) != (None, None):
        if (left, right) != (None, 0):
            raise ValueError(f"layout={layout!r} supports causal=True or no mask, got window_size="
                             f"{tuple(window_size)}; use layout='contiguous' for a sliding window")
        if seqlen_q != seqlen_k or (layout == "zigzag" and seqlen_q % 2):
            even = ", even" if layout == "zigzag" else ""
            raise ValueError(f"layout={layout!r} with causal=True needs equal{even} local seqlen_q and seqlen_k, "
                             f"got q.shape={tuple(q.shape)}, k.shape={tuple(k.shape)}")
    ring = _Ring(axis_name, n, layout, seqlen_q, seqlen_k, scale, softcap, left, right, deterministic)
    out, lse = _ring_attention(q, k, v, ring)
    return (out, lse) if return_lse else out
