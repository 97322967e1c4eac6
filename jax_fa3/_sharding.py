"""The two custom calls as XLA sees them: partitioned and batched.

Partitioning: XLA cannot split a custom call by itself; on sharded operands it
would gather them whole to every device. ``custom_partitioning`` gives it the
rule instead: every device runs the call on its own shard, with

- the batch (and any vmapped leading dimension) sharded as the queries are;
- the heads sharded alike in q and k/v, whole GQA groups per device; or, where
  the q heads' sharding splits groups (MQA over a model axis, say), k/v
  replicated along the axes inside a group;
- the query rows sharded into contiguous blocks; under a mask each device
  runs the call with the window moved to its block's place on the diagonal
  (a ``lax.switch`` on its index over the per-block windows), and under a
  causal-like mask devices trade half-blocks so that each does the same work
  (_RowBlocks);
- keys and head_dim whole (the softmax runs over all keys; the GEMMs contract
  head_dim): sharded keys are gathered (all-gather context parallelism).

A dimension sharded any other way is gathered first, by XLA. dK and dV sum over
query rows and over the q heads of a group, so where either is split across
devices the backward adds the devices' parts (an fp32 ``psum``).

Types: with explicit mesh axes shardings are part of the types; the calls'
results are typed with the layout they run in (_Layout), and the attention
reshards ``out``/``lse`` to q's and each gradient to its primal's type
(typed_like_q, typed_like).

Batching: ``custom_partitioning`` has no batching rule, so the partitioned
calls sit inside ``custom_vmap``: a vmapped axis becomes one more leading
dimension (unbatched operands are broadcast to it), which the handlers fold
into the batch.
"""

from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap
from jax.experimental.custom_partitioning import ArrayMapping, SdyShardingRule, custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jax_fa3 import _ffi


def _axes(entry) -> tuple[str, ...]:
    """A PartitionSpec entry as a tuple of mesh axis names."""
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _entry(axes: tuple[str, ...]):
    """The PartitionSpec entry that shards a dimension over `axes`, in order."""
    return None if not axes else axes[0] if len(axes) == 1 else axes


def _size(mesh, axes) -> int:
    return math.prod(mesh.shape[a] for a in axes)


def _dividing_prefix(mesh, axes, n: int) -> tuple[str, ...]:
    """The longest leading run of `axes` whose size divides n."""
    for end in range(len(axes), 0, -1):
        if n % _size(mesh, axes[:end]) == 0:
            return axes[:end]
    return ()


def _full(spec, rank: int) -> tuple:
    """A PartitionSpec's entries, one per dimension of an array of this rank."""
    return tuple(spec) + (None,) * (rank - len(tuple(spec)))


def _lse_spec(q_spec, rank: int):
    """lse's (and dlse's) spec for a q spec: q's batch, then its heads and rows."""
    entries = _full(q_spec, rank)
    return P(*entries[:-3], entries[-2], entries[-3])


class _Layout:
    """The shardings one call runs with, derived from how q is sharded.

    ``q``: q, out, dout and dq; ``kv``: k, v, dk and dv; ``lse``: lse and dlse;
    ``row_axes``: the mesh axes splitting the query rows; ``kv_partial_over``:
    the mesh axes along which a device holds only part of the query rows or of
    a GQA group, over which dK/dV parts are summed.
    """

    def __init__(self, mesh, q_spec, q_shape, k_shape):
        spec = _full(q_spec, len(q_shape))
        lead = [_dividing_prefix(mesh, _axes(e), n) for e, n in zip(spec[:-3], q_shape[:-3])]
        seq = _dividing_prefix(mesh, _axes(spec[-3]), q_shape[-3])
        heads_q, heads_kv = q_shape[-2], k_shape[-2]
        q_heads = _dividing_prefix(mesh, _axes(spec[-2]), heads_q)
        kv_heads = _dividing_prefix(mesh, q_heads, heads_kv)
        within_group = q_heads[len(kv_heads):]
        # Shards of q heads inside one group need the group's kv head whole: the
        # axes outside the group must split the kv heads exactly, one per shard.
        if within_group and (_size(mesh, kv_heads) != heads_kv
                             or (heads_q // heads_kv) % _size(mesh, within_group)):
            q_heads, within_group = kv_heads, ()
        self.q = P(*map(_entry, lead), _entry(seq), _entry(q_heads), None)
        self.kv = P(*map(_entry, lead), None, _entry(kv_heads), None)
        self.lse = _lse_spec(self.q, len(q_shape))
        self.row_axes = seq
        self.kv_partial_over = seq + within_group


def _explicit_sharding(x):
    """``x``'s sharding where it is part of x's type (jax's explicit sharding mode), else None."""
    sharding = getattr(jax.typeof(x), "sharding", None) if hasattr(jax, "typeof") else None
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    if explicit is None or explicit not in getattr(getattr(sharding, "mesh", None), "axis_types", ()):
        return None
    return sharding


def _typed_layout(q, k) -> _Layout | None:
    """The layout the results are typed with where q's sharding is its type."""
    sharding = _explicit_sharding(q)
    return None if sharding is None else _Layout(sharding.mesh, sharding.spec, q.shape, k.shape)


def _reshard(x, target):
    return x if jax.typeof(x).sharding == target else jax.sharding.reshard(x, target)


def typed_like(x, like):
    """``x`` resharded to ``like``'s sharding where shardings are types (a
    gradient must have its primal's type); ``x`` elsewhere."""
    sharding = _explicit_sharding(like)
    return x if sharding is None else _reshard(x, sharding)


def typed_like_q(out, lse, q):
    """``out`` typed like q and ``lse`` like q's batch, heads and rows, where
    shardings are types (the call computes in its own layout, _Layout, which
    gathers what it cannot split); unchanged elsewhere."""
    sharding = _explicit_sharding(q)
    if sharding is None:
        return out, lse
    return _reshard(out, sharding), _reshard(lse, NamedSharding(sharding.mesh, _lse_spec(sharding.spec, q.ndim)))


def _per_device(fn):
    """``fn`` as the partitioner traces it for one device's shard: outside the
    caller's mesh, whose explicit axes (jax's sharding-in-types mode) would
    annotate its ops with shardings that no partitioner pass removes any more.
    """
    use_abstract_mesh = getattr(jax.sharding, "use_abstract_mesh", None)
    if use_abstract_mesh is None:  # jax 0.6: no mesh context to leave
        return fn

    def run(*args):
        with use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
            return fn(*args)

    return run


def _layout_of(mesh, arg_shapes) -> _Layout:
    q, k = arg_shapes[0], arg_shapes[1]
    # Without a mesh in context JAX cannot name q's sharding by mesh axes:
    # then everything runs replicated (gathered by XLA), correct if not fast.
    spec = q.sharding.spec if isinstance(q.sharding, NamedSharding) else P()
    return _Layout(mesh, spec, q.shape, k.shape)


class _RowBlocks:
    """Where a device's query rows sit in the whole sequence, and the calls for them.

    Row sharding gives device i of n the rows [i m, (i + 1) m). A block of
    `rows` rows from row g0 on has its own diagonal at r + seqlen_k - rows for
    its row r (row g0 + r of the whole), so its window moves by
    g0 + rows - seqlen_q; without a mask nothing moves.

    Under a causal-like mask (each row sees every key up to its diagonal) a
    row's work grows with the row, and the last block would hold the most.
    There device i trades the second half of its rows with device n - 1 - i:
    it computes half-blocks 2i and 2n - 1 - 2i of 2n, the same work on every
    device, and sends the traded half's results back.
    """

    def __init__(self, mesh, row_axes, seqlen_q: int, seqlen_k: int, window_left: int, window_right: int):
        self.axes, self.sizes = row_axes, [mesh.shape[a] for a in row_axes]
        self.n = _size(mesh, row_axes)
        self.seqlen_q, self.window = seqlen_q, (window_left, window_right)
        self.rows = seqlen_q // self.n
        unmasked = window_left >= seqlen_k - 1 and window_right >= seqlen_q - 1
        self.moves = self.n > 1 and not unmasked
        self.balanced = self.moves and window_left >= seqlen_k - 1 and self.rows % 2 == 0

    def _index(self):
        """This device's block: the row axes in order, the first the most significant."""
        index = 0
        for axis, size in zip(self.axes, self.sizes):
            index = index * size + jax.lax.axis_index(axis)
        return index

    def _on_block(self, call, block_of_device, rows: int):
        """``call(left, right)`` for block ``block_of_device(i)`` (of ``rows`` rows) on device i."""
        if not self.moves:
            return call(*self.window)
        left, right = self.window
        shifts = ((block_of_device(i) + 1) * rows - self.seqlen_q for i in range(self.n))
        branches = [call(left - shift, right + shift) for shift in shifts]
        return lambda *arrays: jax.lax.switch(self._index(), branches, *arrays)

    def _trade(self, x):
        return jax.lax.ppermute(x, self.axes, [(i, self.n - 1 - i) for i in range(self.n)])

    def _halves(self, call):
        half = self.rows // 2
        return (self._on_block(call, lambda i: 2 * i, half),
                self._on_block(call, lambda i: 2 * self.n - 1 - 2 * i, half))

    def forward(self, call):
        """``call(left, right) -> f(q, k, v) -> (out, lse)`` run on this device's rows."""
        if not self.balanced:
            return self._on_block(call, lambda i: i, self.rows)
        first, second = self._halves(call)

        def run(q, k, v):
            q_first, q_second = jnp.split(q, 2, axis=-3)
            out_first, lse_first = first(q_first, k, v)
            out_second, lse_second = (self._trade(x) for x in second(self._trade(q_second), k, v))
            return jnp.concatenate([out_first, out_second], -3), jnp.concatenate([lse_first, lse_second], -1)

        return run

    def backward(self, call):
        """``call(left, right) -> f(q, k, v, out, dout, lse, dlse) -> (dq, dk, dv)``, dk and dv in fp32."""
        if not self.balanced:
            grads = self._on_block(call, lambda i: i, self.rows)

            def whole_block(*args):
                dq, dk, dv = grads(*args)
                return dq, dk.astype(jnp.float32), dv.astype(jnp.float32)

            return whole_block
        first, second = self._halves(call)

        def run(q, k, v, out, dout, lse, dlse):
            rows = [jnp.split(x, 2, axis=-3) for x in (q, out, dout)] + [jnp.split(x, 2, axis=-1) for x in (lse, dlse)]
            (q1, o1, do1, l1, dl1), second_half = zip(*rows)
            q2, o2, do2, l2, dl2 = (self._trade(x) for x in second_half)
            dq1, dk1, dv1 = first(q1, k, v, o1, do1, l1, dl1)
            dq2, dk2, dv2 = second(q2, k, v, o2, do2, l2, dl2)
            f32 = jnp.float32
            return (jnp.concatenate([dq1, self._trade(dq2)], -3), dk1.astype(f32) + dk2.astype(f32),
                    dv1.astype(f32) + dv2.astype(f32))

        return run


# Older jax (0.6) has no way to mark Shardy factors that must stay whole; the
# partition callback keeps them whole there all the same.
_MARKS_REPLICATED = "need_replication_factors" in inspect.signature(SdyShardingRule).parameters


def _shardy_rule(value_types, backward: bool) -> SdyShardingRule:
    """The Shardy rule of the call on these operand types: a factor name per dimension.

    With GQA the q and k/v heads are separate factors: a compound factor
    (kv heads x group) would let Shardy split a mesh axis into sub-axes, which
    the partition callback cannot name; _Layout aligns the two instead.
    """
    q_shape, k_shape = tuple(value_types[0].shape), tuple(value_types[1].shape)
    lead = tuple(f"b{i}" for i in range(len(q_shape) - 3))
    kv_heads = "h" if q_shape[-2] == k_shape[-2] else "g"
    q, kv = ArrayMapping(*lead, "s", "h", "d"), ArrayMapping(*lead, "t", kv_heads, "d")
    lse = ArrayMapping(*lead, "h", "s")
    if backward:
        operands, results = (q, kv, kv, q, q, lse, lse), (q, kv, kv)
    else:
        operands, results = (q, kv, kv), (q, lse)
    if not _MARKS_REPLICATED:
        return SdyShardingRule(operands, results)
    # In the order the factors first appear (Shardy wants their indices sorted).
    return SdyShardingRule(operands, results, need_replication_factors=("d", "t"))


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------


def _fwd_local(q, k, v, softmax_scale, softcap, window_left, window_right):
    typed = _typed_layout(q, k)
    return _ffi.fwd(q, k, v, softmax_scale=softmax_scale, softcap=softcap, window_left=window_left,
                    window_right=window_right, result_specs=(typed.q, typed.lse) if typed else (None, None))


_fwd_partitioned = custom_partitioning(_fwd_local, static_argnums=(3, 4, 5, 6))


def _fwd_partition(softmax_scale, softcap, window_left, window_right, mesh, arg_shapes, result_shape):
    del result_shape
    layout = _layout_of(mesh, arg_shapes)
    blocks = _RowBlocks(mesh, layout.row_axes, arg_shapes[0].shape[-3], arg_shapes[1].shape[-3], window_left,
                        window_right)
    local = blocks.forward(lambda left, right: lambda q, k, v: _fwd_local(q, k, v, softmax_scale, softcap, left, right))
    q, kv, lse = (NamedSharding(mesh, spec) for spec in (layout.q, layout.kv, layout.lse))
    return mesh, _per_device(local), (q, lse), (q, kv, kv)


def _fwd_infer(softmax_scale, softcap, window_left, window_right, mesh, arg_shapes, result_shape):
    del softmax_scale, softcap, window_left, window_right, result_shape
    layout = _layout_of(mesh, arg_shapes)
    return NamedSharding(mesh, layout.q), NamedSharding(mesh, layout.lse)


def _fwd_rule(softmax_scale, softcap, window_left, window_right, mesh, value_types, result_types):
    del softmax_scale, softcap, window_left, window_right, mesh, result_types
    return _shardy_rule(value_types, backward=False)


_fwd_partitioned.def_partition(partition=_fwd_partition, infer_sharding_from_operands=_fwd_infer,
                               sharding_rule=_fwd_rule)


# ----------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------


def _bwd_local(q, k, v, out, dout, lse, dlse, softmax_scale, softcap, window_left, window_right, deterministic,
               with_dlse):
    typed = _typed_layout(q, k)
    return _ffi.bwd(q, k, v, out, dout, lse, dlse, softmax_scale=softmax_scale, softcap=softcap,
                    window_left=window_left, window_right=window_right, deterministic=deterministic,
                    with_dlse=with_dlse, result_specs=(typed.q, typed.kv) if typed else (None, None))


_bwd_partitioned = custom_partitioning(_bwd_local, static_argnums=(7, 8, 9, 10, 11, 12))


def _bwd_partition(softmax_scale, softcap, window_left, window_right, deterministic, with_dlse, mesh, arg_shapes,
                   result_shape):
    del result_shape
    layout = _layout_of(mesh, arg_shapes)
    partial_over = layout.kv_partial_over
    blocks = _RowBlocks(mesh, layout.row_axes, arg_shapes[0].shape[-3], arg_shapes[1].shape[-3], window_left,
                        window_right)
    grads = blocks.backward(
        lambda left, right: lambda *args: _bwd_local(*args, softmax_scale, softcap, left, right, deterministic,
                                                      with_dlse))

    def local(q, k, v, out, dout, lse, dlse):
        dq, dk, dv = grads(q, k, v, out, dout, lse, dlse)
        if partial_over:
            # Each device holds dK/dV of its rows / heads only: add them in fp32.
            dk, dv = (jax.lax.psum(x, partial_over) for x in (dk, dv))
        return dq, dk.astype(k.dtype), dv.astype(v.dtype)

    q, kv, lse = (NamedSharding(mesh, spec) for spec in (layout.q, layout.kv, layout.lse))
    return mesh, _per_device(local), (q, kv, kv), (q, kv, kv, q, q, lse, lse)


def _bwd_infer(softmax_scale, softcap, window_left, window_right, deterministic, with_dlse, mesh, arg_shapes,
               result_shape):
    del softmax_scale, softcap, window_left, window_right, deterministic, with_dlse, result_shape
    layout = _layout_of(mesh, arg_shapes)
    q, kv = NamedSharding(mesh, layout.q), NamedSharding(mesh, layout.kv)
    return q, kv, kv


def _bwd_rule(softmax_scale, softcap, window_left, window_right, deterministic, with_dlse, mesh, value_types,
              result_types):
    del softmax_scale, softcap, window_left, window_right, deterministic, with_dlse, mesh, result_types
    return _shardy_rule(value_types, backward=True)


_bwd_partitioned.def_partition(partition=_bwd_partition, infer_sharding_from_operands=_bwd_infer,
                               sharding_rule=_bwd_rule)


# ----------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------


def _batched(fn, n_results: int):
    """`fn` with a vmap rule: a vmapped axis becomes a new leading dimension of every operand."""
    call = custom_vmap(fn)

    @call.def_vmap
    def rule(axis_size, in_batched, *args):
        args = [x if batched else jnp.broadcast_to(x, (axis_size, *x.shape)) for x, batched in zip(args, in_batched)]
        return call(*args), (True,) * n_results

    return call


@functools.lru_cache(maxsize=None)
def _fwd_call(softmax_scale, softcap, window_left, window_right):
    return _batched(lambda q, k, v: _fwd_partitioned(q, k, v, softmax_scale, softcap, window_left, window_right), 2)


@functools.lru_cache(maxsize=None)
def _bwd_call(softmax_scale, softcap, window_left, window_right, deterministic, with_dlse):
    return _batched(lambda *args: _bwd_partitioned(*args, softmax_scale, softcap, window_left, window_right,
                                                   deterministic, with_dlse), 3)


def _partitionable() -> bool:
    """Whether the call may carry its partitioning rule: not inside shard_map.

    Inside a shard_map whose mesh keeps some axes automatic, the shardings the
    rule returns cannot say which axes are manual, and XLA's partitioner
    aborts on them; there the plain call runs and XLA gathers its operands
    along the automatic axes. (With every axis manual the rule has nothing to
    do anyway.)
    """
    return not jax.sharding.get_abstract_mesh().manual_axes


def fwd(q, k, v, *, softmax_scale, softcap, window_left, window_right):
    """Forward: ``out`` (like q) and ``lse`` float32 ``[..., heads_q, seqlen_q]``; see :func:`_ffi.fwd`."""
    if not _partitionable():
        return _ffi.fwd(q, k, v, softmax_scale=softmax_scale, softcap=softcap, window_left=window_left,
                        window_right=window_right)
    return _fwd_call(softmax_scale, softcap, window_left, window_right)(q, k, v)


def bwd(q, k, v, out, dout, lse, dlse, *, softmax_scale, softcap, window_left, window_right, deterministic):
    """Backward: ``dq, dk, dv`` (like q, k, v); see :func:`_ffi.bwd`.

    ``dlse=None``: lse's cotangent is zero. lse then stands in for it as the
    call's operand (same shape and sharding), unread, so no zeros are made.
    """
    with_dlse = dlse is not None
    args = (q, k, v, out, dout, lse, dlse if with_dlse else lse)
    if not _partitionable():
        return _ffi.bwd(*args, softmax_scale=softmax_scale, softcap=softcap, window_left=window_left,
                        window_right=window_right, deterministic=deterministic, with_dlse=with_dlse)
    return _bwd_call(softmax_scale, softcap, window_left, window_right, deterministic, with_dlse)(*args)
