"""Context parallelism: one long sequence split over devices, two ways.

- all-gather: ``flash_attention`` under ``jax.jit`` on sequence-sharded q, k,
  v; the partitioning rule keeps each device on its query rows and XLA gathers
  the keys and values whole on every device.
- ring: ``ring_attention`` inside ``jax.shard_map``; K/V shards travel around
  the ring, never gathered (layouts contiguous, zigzag, striped).

For each, the forward and the gradients are checked against ``flash_attention``
on one device, and forward + backward is timed. Without several GPUs it runs on
CPU devices (``--devices``, default 8), which shows that it works, not how fast
it is: on GPUs run it with the real device count.

    python examples/context_parallel.py                         # 8 CPU devices, small
    python examples/context_parallel.py --seqlen 65536 --heads 32 --kv-heads 8   # on a multi-GPU host
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parse():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=8, help="CPU devices to fake when there is no GPU")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seqlen", type=int, default=512, help="the whole sequence, split over the devices")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--markdown", metavar="FILE", help="also write the table, with device, date, jax version and "
                        "git revision, to FILE")
    return parser.parse_args()


ARGS = _parse()
# CPU devices must be asked for before JAX starts; GPUs, where there are any, are used as they are.
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={ARGS.devices}")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import jax_fa3  # noqa: E402
from jax_fa3.benchmark import git_revision  # noqa: E402

try:
    from jax import shard_map  # noqa: E402
    CHECKS = {}
except ImportError:  # jax < 0.7, whose replication check knows nothing of custom calls
    from jax.experimental.shard_map import shard_map  # noqa: E402
    CHECKS = {"check_rep": False}


def timed(fn, *args):
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(ARGS.iters):
        result = fn(*args)
    jax.block_until_ready(result)
    return result, (time.perf_counter() - start) / ARGS.iters


def main() -> None:
    devices = jax.devices()
    n = len(devices)
    mesh = Mesh(np.array(devices), ("seq",))
    header = (f"{n} x {devices[0].device_kind} ({devices[0].platform}), jax {jax.__version__}, jax_fa3 @ "
              f"{git_revision()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; causal, batch {ARGS.batch}, "
              f"seqlen {ARGS.seqlen}, heads {ARGS.heads}/{ARGS.kv_heads}, head_dim {ARGS.head_dim}, bf16; "
              f"forward + backward, mean of {ARGS.iters}")
    print(header)
    if ARGS.seqlen % (2 * n):
        sys.exit(f"--seqlen must be a multiple of 2 x {n} devices")
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(keys[0], (ARGS.batch, ARGS.seqlen, ARGS.heads, ARGS.head_dim), jnp.bfloat16)
    k, v = (jax.random.normal(key, (ARGS.batch, ARGS.seqlen, ARGS.kv_heads, ARGS.head_dim), jnp.bfloat16)
            for key in keys[1:3])
    dout = jax.random.normal(keys[3], q.shape, jnp.bfloat16)

    def step(attention):
        """Forward and backward of sum(attention(q, k, v) * dout), dout in the rows' order."""
        loss = lambda q, k, v, dout: jnp.sum(attention(q, k, v).astype(jnp.float32) * dout.astype(jnp.float32))
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

    # Causal forward 2 B S^2 H D FLOPs, the backward 2.5 times that.
    flops = 3.5 * 2 * ARGS.batch * ARGS.seqlen**2 * ARGS.heads * ARGS.head_dim
    table = ["| way | ms | TFLOP/s per device | dq, dk, dv: max error / max, against one device |", "|---|---|---|---|"]

    def report(name, seconds, devices_used, errors):
        errors = ", ".join(f"{e:.1e}" for e in errors) if errors else "(the reference)"
        table.append(f"| {name} | {seconds * 1e3:.2f} | {flops / devices_used / seconds / 1e12:.3g} | {errors} |")
        print(table[-1])

    causal = lambda q, k, v: jax_fa3.flash_attention(q, k, v, causal=True)
    (_, want), seconds = timed(step(causal), q, k, v, dout)
    print("\n".join(table[:2]))
    report("one device, whole sequence", seconds, 1, None)

    runs = [("all-gather (flash_attention, jit)", "contiguous", step(causal))]
    for layout in jax_fa3.ring.LAYOUTS:
        ring = shard_map(lambda q, k, v, layout=layout: jax_fa3.ring_attention(q, k, v, "seq", causal=True,
                                                                               layout=layout),
                         mesh=mesh, in_specs=P(None, "seq"), out_specs=P(None, "seq"), **CHECKS)
        runs.append((f"ring, {layout}", layout, step(ring)))

    sharded = NamedSharding(mesh, P(None, "seq"))
    for name, layout, run in runs:
        perm = jax_fa3.ring_permutation(ARGS.seqlen, n, layout)
        back = np.argsort(perm)
        args = [jax.device_put(jnp.take(x, perm, axis=1), sharded) for x in (q, k, v, dout)]
        (_, grads), seconds = timed(run, *args)
        errors = []
        for g, w in zip(grads, want):
            g, w = np.asarray(g, np.float32)[:, back], np.asarray(w, np.float32)
            errors.append(float(np.max(np.abs(g - w)) / np.max(np.abs(w))))
        report(name, seconds, n, errors)
    if ARGS.markdown:
        with open(ARGS.markdown, "w") as f:
            f.write(f"# Context parallelism: all-gather and ring attention\n\n{header}\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
