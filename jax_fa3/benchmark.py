"""Attention benchmark: jax_fa3 vs cuDNN vs XLA (and, opt-in, FlashAttention-3) on the FlashAttention-3 paper's grid.

    python -m jax_fa3.benchmark [--seqlens 512,1k,...] [--head-dims 64,128,256]
        [--dtypes bf16,fp16] [--causal both|yes|no] [--impls jax_fa3,cudnn,xla[,fa3]]
        [--fa3-lib LIB] [--modes fwd,fwdbwd,bwd] [--csv F] [--json F] [--markdown F] [--plot F.png]

The grid keeps the total number of tokens and the hidden size fixed, as the
paper does: ``batch = total_tokens // seqlen`` and ``heads = hidden // head_dim``
(16k tokens, hidden 2048 by default). Every implementation is timed in the same
run, on the same inputs:

- ``jax_fa3``: :func:`jax_fa3.flash_attention`;
- ``cudnn`` / ``xla``: ``jax.nn.dot_product_attention(..., implementation=...)``;
- ``fa3`` (only when asked for, with ``--fa3-lib``): FlashAttention-3's own Hopper
  kernels through a shared library that ``tools/dev/build_fa3_ffi.sh`` builds from a
  flash-attention checkout (``tools/dev/fa3_ffi.cu``; bf16/fp16, heads_q == heads_kv).

Modes: ``fwd`` times the jit-compiled forward, ``fwdbwd`` the jit-compiled
forward plus the backward (a ``jax.vjp`` with a fixed random cotangent), and
``bwd`` the backward alone: the jit-compiled function that ``jax.vjp`` returns
(the forward's residuals computed once, before timing, are its inputs), called
with the cotangent. FLOPs follow the paper: the forward does ``4·b·s²·h·d``
(half when causal), the backward 2.5 times that. Reported throughputs: fwd
(forward FLOPs over the forward time), fwd+bwd (3.5× forward FLOPs over the
fwd+bwd time) and bwd (2.5× forward FLOPs over the backward's time; without
the ``bwd`` mode, over fwd+bwd time minus forward time, which the CSV/JSON
keep as ``bwd_derived_*`` wherever fwd and fwdbwd both ran).

Each timed sample dispatches back-to-back calls (rotating among a few sets of
random inputs; as many as fill about ``--min-sample-ms``, judged from one timed
call), then waits for the device; the per-call time of a sample is its elapsed
time over its call count. At each grid point and mode the implementations are
sampled in turns, so that they see the same device state (sustained-load
clocks, temperature, power) rather than one running after the other, in an
order where each follows every other one equally often (a sample inherits the
clock its predecessor's power draw left). The default 20 ms keeps the dispatch of the first
call and the wait after the last one to a few percent of a sample: with 1 ms
samples (one call each at long sequences) they added ~8% to the time at 16k on an
H200, up to 30% at 4k (benchmarks/notes.md). Reported: the median and the minimum over ``--iters``
samples, after ``--warmup`` calls (the first one compiles; its time is logged
and saved as ``*_first_call_s``). Ctrl-C stops the grid and still writes the
reports for the points done.

With ``--sustained-ms MS`` each implementation is then also timed alone: MS ms
of its calls back to back, then ``--iters`` more samples (``*_sustained_ms``,
a table of its own in the Markdown report). Under a GPU's power cap the clock
settles on each implementation's own draw, so this is the time of a loop of
that one kernel, where the interleaved samples give each the clock others
left; a training step sits between the two (on an H100, FlashAttention-3's
backward drew the most a cycle and gained the most from interleaving,
benchmarks/notes.md, forty-second session).

An implementation that fails at a grid point (cuDNN unsupported or absent, out
of memory...) is recorded as ``n/a`` with the reason; the run goes on. XLA
materialises the ``b·h·s²`` scores and is skipped above ``--xla-max-seqlen``.
With ``--check`` (the default) the outputs and gradients of the other
implementations are compared with jax_fa3's on the same inputs, so that a fast
but wrong kernel is visible.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import shlex
import subprocess
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jax_fa3

IMPLS = ("jax_fa3", "cudnn", "xla", "fa3")
DEFAULT_IMPLS = ("jax_fa3", "cudnn", "xla")  # fa3 needs --fa3-lib
MODES = ("fwd", "fwdbwd", "bwd")
MODE_LABELS = {"fwd": "fwd", "fwdbwd": "f+b", "bwd": "bwd"}
DTYPES = {"bf16": jnp.bfloat16, "fp16": jnp.float16}
DTYPE_ALIASES = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "half": "fp16"}
DEFAULT_SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
DEFAULT_HEAD_DIMS = (64, 128, 256)
PROG = "python -m jax_fa3.benchmark"
NA = "n/a"

# Backward FLOPs over forward FLOPs (the paper's convention), and each mode's
# FLOPs in forward FLOPs.
BWD_FLOP_RATIO = 2.5
MODE_FLOPS = {"fwd": 1.0, "fwdbwd": 1.0 + BWD_FLOP_RATIO, "bwd": BWD_FLOP_RATIO}


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------


def _items(text: str) -> list[str]:
    """The non-empty, lower-cased, comma-separated items of an option value."""
    items = [item.strip().lower() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("empty list")
    return items


def _int_list(text: str) -> list[int]:
    """'512,1k,2K' -> [512, 1024, 2048]."""
    values = []
    for item in _items(text):
        factor = 1024 if item.endswith("k") else 1
        try:
            value = int(item[:-1] if factor > 1 else item) * factor
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer list: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"values must be positive: {text!r}")
        values.append(value)
    return values


def _choice_list(choices: Sequence[str], aliases: dict[str, str] | None = None) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = []
        for item in _items(text):
            item = (aliases or {}).get(item, item)
            if item not in choices:
                raise argparse.ArgumentTypeError(f"{item!r} is not one of {', '.join(choices)}")
            if item not in values:
                values.append(item)
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Time jax_fa3, cuDNN, XLA and (opt-in) FlashAttention-3 attention (forward, forward+backward, backward) on the "
        "FlashAttention-3 paper's grid: batch = total_tokens // seqlen, heads = hidden // head_dim.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("grid")
    g.add_argument("--seqlens", type=_int_list, default=",".join(map(str, DEFAULT_SEQLENS)),
                   help="comma-separated sequence lengths ('k' suffix = 1024)")
    g.add_argument("--head-dims", type=_int_list, default=",".join(map(str, DEFAULT_HEAD_DIMS)), help="comma-separated head dims")
    g.add_argument("--dtypes", type=_choice_list(tuple(DTYPES), DTYPE_ALIASES), default=",".join(DTYPES),
                   help="comma-separated: bf16, fp16")
    g.add_argument("--causal", choices=("both", "yes", "no"), default="both")
    g.add_argument("--total-tokens", type=int, default=16384, help="batch * seqlen")
    g.add_argument("--hidden", type=int, default=2048, help="heads * head_dim")
    g.add_argument("--impls", type=_choice_list(IMPLS), default=",".join(DEFAULT_IMPLS),
                   help="comma-separated: " + ", ".join(IMPLS))
    g.add_argument("--fa3-lib", metavar="LIB",
                   help="FlashAttention-3 FFI library (tools/dev/build_fa3_ffi.sh) for --impls ...,fa3")
    g.add_argument("--modes", type=_choice_list(MODES), default=",".join(MODES), help="comma-separated: fwd, fwdbwd, bwd")
    g.add_argument("--xla-max-seqlen", type=int, default=8192,
                   help="skip the XLA implementation above this seqlen (it materialises b*h*s^2 scores); 0: no limit")
    t = p.add_argument_group("timing")
    t.add_argument("--iters", type=int, default=30, help="timed samples per measurement")
    t.add_argument("--warmup", type=int, default=3, help="untimed calls first (the first one compiles)")
    t.add_argument("--min-sample-ms", type=float, default=20.0,
                   help="each sample runs back-to-back calls for at least this long (long enough that the host's "
                        "dispatch and the final wait are a small part of it); 0: one call per sample")
    t.add_argument("--input-sets", type=int, default=3, help="sets of random inputs the calls rotate among")
    t.add_argument("--sustained-ms", type=float, default=0.0, metavar="MS",
                   help="also time each implementation alone: MS ms of its calls back to back, then --iters "
                        "samples (<mode>_sustained_ms). Under a GPU's power cap the clock then settles on the "
                        "implementation's own draw, where interleaved samples start from the clock the previous "
                        "one left; 0: off")
    t.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    c = p.add_argument_group("correctness")
    c.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="compare cudnn/xla outputs and gradients with jax_fa3's at each grid point")
    c.add_argument("--check-rtol", type=float, default=0.05,
                   help="flag a difference above this fraction of the largest reference magnitude")
    o = p.add_argument_group("output")
    o.add_argument("--csv", metavar="FILE", help="write one row per (grid point, implementation)")
    o.add_argument("--json", metavar="FILE", help="write the run's metadata and results")
    o.add_argument("--markdown", metavar="FILE", help="write a Markdown report with a header block")
    o.add_argument("--plot", metavar="FILE", help="write a TFLOP/s vs seqlen plot (needs matplotlib)")
    o.add_argument("--revision", help="git revision for the report; when omitted, git rev-parse --short HEAD or unknown")
    o.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("iters", "total_tokens", "hidden", "input_sets"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.min_sample_ms < 0 or args.xla_max_seqlen < 0 or args.sustained_ms < 0:
        parser.error("--warmup, --min-sample-ms, --xla-max-seqlen and --sustained-ms must be >= 0")
    if "fa3" in args.impls and not args.fa3_lib:
        parser.error("--impls fa3 needs --fa3-lib (the library tools/dev/build_fa3_ffi.sh builds)")
    return args


# ----------------------------------------------------------------------------
# Grid and FLOPs
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Point:
    """One grid point: q, k, v are [batch, seqlen, heads, head_dim]."""

    seqlen: int
    head_dim: int
    causal: bool
    dtype: str
    batch: int
    heads: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.seqlen, self.heads, self.head_dim)

    def label(self) -> str:
        return (f"{self.dtype} {'causal' if self.causal else 'non-causal'} head_dim={self.head_dim} "
                f"seqlen={self.seqlen} batch={self.batch} heads={self.heads}")


def build_grid(args: argparse.Namespace) -> list[Point]:
    """Grid points ordered by dtype, causal, head_dim, then seqlen."""
    causal_values = {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]
    points = []
    for dtype in args.dtypes:
        for causal in causal_values:
            for head_dim in args.head_dims:
                for seqlen in args.seqlens:
                    batch = max(1, args.total_tokens // seqlen)
                    heads = max(1, args.hidden // head_dim)
                    points.append(Point(seqlen, head_dim, causal, dtype, batch, heads))
    return points


def fwd_flops(point: Point) -> float:
    """4·b·s²·h·d (two matmuls of 2·s²·d each per head), halved when causal."""
    flops = 4.0 * point.batch * point.seqlen**2 * point.heads * point.head_dim
    return flops / 2 if point.causal else flops


def tflops(flops: float, ms: float | None) -> float | None:
    if ms is None or not ms > 0:
        return None
    return flops / (ms * 1e-3) / 1e12


def xla_skip_reason(point: Point, args: argparse.Namespace, device, mode: str) -> str | None:
    """Why XLA is not run at this point in this mode (its s² scores would not fit), or None."""
    score_bytes = 4 * point.batch * point.heads * point.seqlen**2
    if args.xla_max_seqlen and point.seqlen > args.xla_max_seqlen:
        return (f"skipped: seqlen > --xla-max-seqlen {args.xla_max_seqlen} "
                "(XLA materialises the b*h*s^2 float32 scores)")
    limit = _device_memory_limit(device)
    # Forward+backward keeps scores, probabilities and their gradients: ~3 s² buffers; the
    # backward timed alone also holds every input set's residuals (its probabilities).
    buffers = 3 + (args.input_sets if mode == "bwd" else 0)
    if limit and buffers * score_bytes > limit:
        return (f"skipped: XLA needs ~{buffers} x {score_bytes / 2**30:.1f} GiB of s^2 buffers, "
                f"more than the device's {limit / 2**30:.1f} GiB")
    return None


def _device_memory_limit(device) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend has memory stats
        return None
    return (stats or {}).get("bytes_limit")


# ----------------------------------------------------------------------------
# Inputs and the functions under test
# ----------------------------------------------------------------------------


def make_inputs(point: Point, key, n_sets: int) -> list[tuple]:
    """n_sets tuples (q, k, v, dout) of standard-normal values in the point's dtype."""
    dtype = DTYPES[point.dtype]
    sets = []
    for key_set in jax.random.split(key, n_sets):
        sets.append(tuple(jax.random.normal(k, point.shape, dtype) for k in jax.random.split(key_set, 4)))
    jax.block_until_ready(sets)
    return sets


def load_fa3(lib_path: str) -> None:
    """Registers the FFI targets of tools/dev/fa3_ffi.cu (FlashAttention-3's kernels) from lib_path."""
    import ctypes

    lib = ctypes.cdll.LoadLibrary(os.path.abspath(lib_path))
    jax.ffi.register_ffi_target("jax_fa3_bench_fa3_fwd", jax.ffi.pycapsule(lib.Fa3Fwd), platform="CUDA")
    jax.ffi.register_ffi_target("jax_fa3_bench_fa3_bwd", jax.ffi.pycapsule(lib.Fa3Bwd), platform="CUDA")


def _fa3_bwd_scratch(shape: tuple[int, ...], causal: bool) -> tuple[jax.ShapeDtypeStruct, ...]:
    """FlashAttention-3's backward workspace, sized as its mha_bwd sizes it (fa3_ffi.cu checks)."""
    b, s, h, d = shape
    dr = next(r for r in (64, 96, 128, 192, 256) if d <= r)
    block_m = 128 if dr == 64 else 80 if dr == 128 and not causal else 64
    rows = b * h * (-(-s // block_m) * block_m)
    f32 = jnp.float32
    return (jax.ShapeDtypeStruct((rows,), f32), jax.ShapeDtypeStruct((rows,), f32),
            jax.ShapeDtypeStruct((rows * dr,), f32),
            jax.ShapeDtypeStruct((-(-s // block_m) * b * h,), jnp.int32))


def fa3_attention(causal: bool) -> Callable:
    """(q, k, v) -> out through FlashAttention-3's forward and backward kernels (load_fa3 first)."""

    def fwd_call(q, k, v):
        b, s, h, _ = q.shape
        out, lse, _ = jax.ffi.ffi_call(
            "jax_fa3_bench_fa3_fwd",
            (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, s), jnp.float32),
             jax.ShapeDtypeStruct((4,), jnp.int32)),
        )(q, k, v, softmax_scale=np.float32(q.shape[-1] ** -0.5), causal=causal)
        return out, lse

    @jax.custom_vjp
    def attn(q, k, v):
        return fwd_call(q, k, v)[0]

    def attn_fwd(q, k, v):
        out, lse = fwd_call(q, k, v)
        return out, (q, k, v, out, lse)

    def attn_bwd(res, dout):
        q, k, v, out, lse = res
        like = jax.ShapeDtypeStruct(q.shape, q.dtype)
        grads = jax.ffi.ffi_call(
            "jax_fa3_bench_fa3_bwd", (like, like, like, *_fa3_bwd_scratch(q.shape, causal)),
        )(q, k, v, out, dout, lse, softmax_scale=np.float32(q.shape[-1] ** -0.5), causal=causal)
        return grads[:3]

    attn.defvjp(attn_fwd, attn_bwd)
    return attn


def attention_fn(impl: str, causal: bool) -> Callable:
    """(q, k, v) -> out for one implementation; default softmax scale 1/sqrt(head_dim)."""
    if impl == "jax_fa3":
        return lambda q, k, v: jax_fa3.flash_attention(q, k, v, causal=causal)
    if impl == "fa3":
        return fa3_attention(causal)
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=impl)


def make_step(impl: str, causal: bool, mode: str) -> Callable:
    """A jit-compiled (q, k, v, dout) -> out (fwd) or (dq, dk, dv) (fwdbwd), or (vjp, dout) -> (dq, dk, dv) (bwd).

    For bwd, ``vjp`` is the function :func:`make_bwd_inputs` got from ``jax.vjp``: a
    pytree of the forward's residuals, so the jit-compiled call runs the backward only.
    """
    if mode == "bwd":
        return jax.jit(lambda vjp, dout: vjp(dout))
    attn = attention_fn(impl, causal)
    if mode == "fwd":
        return jax.jit(lambda q, k, v, dout: attn(q, k, v))

    def fwdbwd(q, k, v, dout):
        _, vjp = jax.vjp(attn, q, k, v)
        return vjp(dout)

    return jax.jit(fwdbwd)


def make_bwd_inputs(impl: str, causal: bool, inputs: Sequence[tuple]) -> list[tuple]:
    """(vjp, dout) per input set: the jit-compiled forward's ``jax.vjp`` (residuals on the device) and dout."""
    attn = jax.jit(attention_fn(impl, causal))
    sets = [(jax.vjp(attn, q, k, v)[1], dout) for q, k, v, dout in inputs]
    jax.block_until_ready(sets)
    return sets


# ----------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    median_ms: float
    min_ms: float
    calls_per_sample: int
    first_call_s: float  # compilation included


class Timer:
    """Times one jit-compiled function sample by sample, so several can be interleaved.

    ``Timer(fn, ...)`` compiles and warms fn up and sizes its samples; each
    :meth:`sample` dispatches ``calls_per_sample`` calls back to back, rotating
    among the input sets, then blocks on the last result (one device executes
    them in order), so host dispatch overlaps device work as in a training step.
    """

    def __init__(self, fn: Callable, input_sets: Sequence[tuple], *, warmup: int, min_sample_ms: float):
        self.fn, self.input_sets = fn, input_sets
        n = len(input_sets)
        start = time.perf_counter()
        jax.block_until_ready(fn(*input_sets[0]))
        self.first_call_s = time.perf_counter() - start
        for i in range(1, warmup):
            jax.block_until_ready(fn(*input_sets[i % n]))
        start = time.perf_counter()
        jax.block_until_ready(fn(*input_sets[0]))
        one_call_s = time.perf_counter() - start
        self.calls = max(1, min(1000, math.ceil(min_sample_ms * 1e-3 / max(one_call_s, 1e-7))))
        self.samples: list[float] = []
        self._call = 0

    def _run(self) -> float:
        """ms a call over one sample's worth of back-to-back calls."""
        n = len(self.input_sets)
        start = time.perf_counter()
        for _ in range(self.calls):
            out = self.fn(*self.input_sets[self._call % n])
            self._call += 1
        jax.block_until_ready(out)
        return (time.perf_counter() - start) / self.calls * 1e3

    def sample(self) -> None:
        self.samples.append(self._run())

    def timing(self) -> Timing:
        return Timing(float(np.median(self.samples)), float(np.min(self.samples)), self.calls, self.first_call_s)

    def sustained_ms(self, settle_ms: float, iters: int) -> float:
        """Median ms a call of iters samples taken after settle_ms of calls, all back to back, apart from
        :meth:`sample`'s samples."""
        end = time.perf_counter() + settle_ms * 1e-3
        while time.perf_counter() < end:
            self._run()
        return float(np.median([self._run() for _ in range(iters)]))


def balanced_order(n: int, iters: int) -> list[int]:
    """Indices of n timers, each iters times, where every timer follows each other one equally often.

    A sample's time depends on its predecessor: under the power cap the clock
    the previous implementation's draw left carries over (on an H100 every
    backward ran 2-4% slower right after FlashAttention-3's than after
    another's, benchmarks/notes.md, forty-second session). Rotating one cyclic order
    (A B C, B C A, ...) gives each timer mostly the same predecessor; this
    walks an Eulerian circuit of the complete directed graph on the timers
    (every ordered pair once per n·(n - 1) samples) until each has iters.
    """
    if n <= 1:
        return [0] * (iters if n == 1 else 0)
    unused = {v: [w for w in range(n) if w != v] for v in range(n)}
    stack, circuit = [0], []
    while stack:  # Hierholzer's algorithm
        if unused[stack[-1]]:
            stack.append(unused[stack[-1]].pop())
        else:
            circuit.append(stack.pop())
    circuit = circuit[::-1][:-1]  # closed: drop the repeated start
    order, counts = [], [0] * n
    while len(order) < n * iters:
        for v in circuit:
            if counts[v] < iters:
                order.append(v)
                counts[v] += 1
    return order


def time_interleaved(timers: Sequence[Timer], iters: int) -> None:
    """iters samples of every timer, in turns (:func:`balanced_order`).

    The implementations compared at a grid point then share the device's state
    (clocks under sustained load, temperature, power) sample for sample,
    instead of one being timed after the other, and each follows every other
    one equally often.
    """
    for i in balanced_order(len(timers), iters):
        timers[i].sample()


def short_error(exc: BaseException, limit: int = 200) -> str:
    """'Type: first line of the message', shortened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------
# Correctness sanity
# ----------------------------------------------------------------------------


@jax.jit
def _diff_stats(ours, theirs):
    """(max |ours - theirs|, max |theirs|) over matching pytrees of arrays."""
    pairs = list(zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)))
    diff = jnp.max(jnp.stack([jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))) for a, b in pairs]))
    scale = jnp.max(jnp.stack([jnp.max(jnp.abs(b.astype(jnp.float32))) for _, b in pairs]))
    return diff, scale


@jax.jit
def _all_finite_device(x):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(x)]))


def compare(ours, theirs) -> tuple[float, float]:
    """(max |ours - theirs|, max |theirs|) over an array or a tuple of arrays."""
    diff, scale = _diff_stats(ours, theirs)
    return float(diff), float(scale)


def _is_mismatch(diff: float, scale: float, rtol: float) -> bool:
    return not math.isfinite(diff) or diff > rtol * max(scale, 1e-6)


def check_point(records: dict[str, dict], outputs: dict[tuple[str, str], object], rtol: float) -> None:
    """Fills the check_* fields: each implementation's output and gradients vs jax_fa3's."""
    # Gradients from fwdbwd, or from bwd where only that ran.
    grad_mode = "fwdbwd" if ("jax_fa3", "fwdbwd") in outputs else "bwd"
    for impl, rec in records.items():
        if impl == "jax_fa3":
            bad = [m for m in MODES if (impl, m) in outputs and not _all_finite(outputs[(impl, m)])]
            rec["check"] = f"non-finite {'/'.join(bad)}" if bad else ""
            continue
        flags = []
        for mode, field in (("fwd", "check_out_max_abs_diff"), (grad_mode, "check_grad_max_abs_diff")):
            if ("jax_fa3", mode) in outputs and (impl, mode) in outputs:
                diff, scale = compare(outputs[("jax_fa3", mode)], outputs[(impl, mode)])
                rec[field] = diff
                rec[field.replace("max_abs_diff", "ref_max_abs")] = scale
                if _is_mismatch(diff, scale, rtol):
                    flags.append("out" if mode == "fwd" else "grad")
        if flags:
            rec["check"] = "MISMATCH " + "/".join(flags)
        elif rec.get("check_out_max_abs_diff") is not None or rec.get("check_grad_max_abs_diff") is not None:
            rec["check"] = "ok"


def _all_finite(x) -> bool:
    return bool(_all_finite_device(x))


# ----------------------------------------------------------------------------
# Running the grid
# ----------------------------------------------------------------------------


def empty_record(point: Point, impl: str) -> dict:
    rec = dataclasses.asdict(point)
    rec.update(impl=impl, fwd_flops=fwd_flops(point))
    for mode in MODES:
        rec.update({f"{mode}_status": "", f"{mode}_ms": None, f"{mode}_ms_min": None,
                    f"{mode}_calls_per_sample": None, f"{mode}_first_call_s": None, f"{mode}_note": "",
                    f"{mode}_sustained_ms": None, f"{mode}_sustained_tflops": None})
    rec.update(bwd_derived_ms=None, fwd_tflops=None, fwdbwd_tflops=None, bwd_tflops=None, bwd_derived_tflops=None,
               check="", check_out_max_abs_diff=None, check_out_ref_max_abs=None,
               check_grad_max_abs_diff=None, check_grad_ref_max_abs=None)
    return rec


def finish_record(rec: dict) -> None:
    """Throughputs from median times; bwd_tflops from the bwd mode, else from fwd+bwd minus fwd.

    The derived backward time (fwd+bwd minus fwd) is also kept as bwd_derived_*.
    """
    flops = rec["fwd_flops"]
    for mode in MODES:
        rec[f"{mode}_tflops"] = tflops(MODE_FLOPS[mode] * flops, rec[f"{mode}_ms"])
        rec[f"{mode}_sustained_tflops"] = tflops(MODE_FLOPS[mode] * flops, rec[f"{mode}_sustained_ms"])
    if rec["fwd_ms"] is not None and rec["fwdbwd_ms"] is not None:
        rec["bwd_derived_ms"] = rec["fwdbwd_ms"] - rec["fwd_ms"]
        rec["bwd_derived_tflops"] = tflops(MODE_FLOPS["bwd"] * flops, rec["bwd_derived_ms"])
    if rec["bwd_ms"] is None:
        rec["bwd_tflops"] = rec["bwd_derived_tflops"]


def prepare(rec: dict, mode: str, point: Point, inputs: Sequence[tuple], args: argparse.Namespace,
            outputs: dict, log: Callable[[str], None]) -> Timer | None:
    """Compiles and warms up one implementation in one mode; a failure becomes n/a with its reason."""
    impl = rec["impl"]
    try:
        step = make_step(impl, point.causal, mode)
        if mode == "bwd":
            inputs = make_bwd_inputs(impl, point.causal, inputs)
        timer = Timer(step, inputs, warmup=args.warmup, min_sample_ms=args.min_sample_ms)
        if args.check:
            outputs[(impl, mode)] = step(*inputs[0])
        return timer
    except Exception as exc:  # noqa: BLE001 - any failure is a result, not a crash
        rec[f"{mode}_status"], rec[f"{mode}_note"] = NA, short_error(exc)
        log(f"    {impl:8s} {mode:7s} n/a: {rec[f'{mode}_note']}")
        return None


def record_timing(rec: dict, mode: str, point: Point, timer: Timer, log: Callable[[str], None]) -> None:
    """Stores a sampled timer's median/min time (and its calls per sample) in rec and logs its throughput."""
    timing = timer.timing()
    rec.update({f"{mode}_status": "ok", f"{mode}_ms": timing.median_ms, f"{mode}_ms_min": timing.min_ms,
                f"{mode}_calls_per_sample": timing.calls_per_sample, f"{mode}_first_call_s": timing.first_call_s})
    flops = fwd_flops(point) * MODE_FLOPS[mode]
    log(f"    {rec['impl']:8s} {mode:7s} {timing.median_ms:9.3f} ms (min {timing.min_ms:.3f})"
        f" {_fmt_tflops(tflops(flops, timing.median_ms)):>8s} TFLOP/s  (first call {timing.first_call_s:.1f} s)")


def time_sustained(records: dict[str, dict], mode: str, point: Point, timers: dict[str, Timer],
                   args: argparse.Namespace, log: Callable[[str], None]) -> None:
    """--sustained-ms: each implementation alone, one after the other (Timer.sustained_ms)."""
    for impl, timer in timers.items():
        try:
            ms = timer.sustained_ms(args.sustained_ms, args.iters)
        except Exception as exc:  # noqa: BLE001 - the interleaved times stand; the note says why this is missing
            records[impl][f"{mode}_note"] = f"sustained: {short_error(exc)}"
            log(f"    {impl:8s} {mode:7s} sustained failed: {short_error(exc)}")
            continue
        records[impl][f"{mode}_sustained_ms"] = ms
        flops = fwd_flops(point) * MODE_FLOPS[mode]
        log(f"    {impl:8s} {mode:7s} {ms:9.3f} ms sustained {_fmt_tflops(tflops(flops, ms)):>8s} TFLOP/s")


def run_point(point: Point, args: argparse.Namespace, key, device, log: Callable[[str], None]) -> list[dict]:
    """Times every requested implementation and mode at one grid point, then checks them against jax_fa3.

    All implementations of a mode are compiled and warmed up first, then
    sampled in turns (:func:`time_interleaved`).
    """
    records = {impl: empty_record(point, impl) for impl in args.impls}
    try:
        inputs = make_inputs(point, key, args.input_sets)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: the point is n/a for everyone
        reason = f"inputs: {short_error(exc)}"
        log(f"    n/a: {reason}")
        for rec in records.values():
            for mode in args.modes:
                rec[f"{mode}_status"], rec[f"{mode}_note"] = NA, reason
        return list(records.values())
    outputs: dict[tuple[str, str], object] = {}  # (impl, mode) -> result on inputs[0], for the check
    for mode in args.modes:
        timers: dict[str, Timer] = {}
        for impl, rec in records.items():
            skip = xla_skip_reason(point, args, device, mode) if impl == "xla" else None
            if skip:
                rec[f"{mode}_status"], rec[f"{mode}_note"] = NA, skip
                log(f"    {impl:8s} {mode:7s} n/a: {skip}")
                continue
            timer = prepare(rec, mode, point, inputs, args, outputs, log)
            if timer is not None:
                timers[impl] = timer
        try:
            time_interleaved(list(timers.values()), args.iters)
        except Exception as exc:  # noqa: BLE001 - a failure while timing: n/a for the mode
            for impl in timers:
                records[impl][f"{mode}_status"], records[impl][f"{mode}_note"] = NA, short_error(exc)
            log(f"    {mode:7s} timing failed: {short_error(exc)}")
            continue
        for impl, timer in timers.items():
            record_timing(records[impl], mode, point, timer, log)
        if args.sustained_ms > 0:
            time_sustained(records, mode, point, timers, args, log)
    for rec in records.values():
        finish_record(rec)
    if args.check and "jax_fa3" in records:
        try:
            check_point(records, outputs, args.check_rtol)
        except Exception as exc:  # noqa: BLE001
            records["jax_fa3"]["check"] = f"check failed: {short_error(exc)}"
        log(f"    check: {check_cell(records)}")
    return list(records.values())


def run_grid(args: argparse.Namespace, log: Callable[[str], None]) -> tuple[list[Point], list[dict], bool]:
    """All grid points; returns (points, records, complete). Ctrl-C stops early and keeps what ran."""
    points = build_grid(args)
    device = jax.devices()[0]
    base_key = jax.random.key(args.seed)
    records: list[dict] = []
    done: list[Point] = []
    start = time.perf_counter()
    for index, point in enumerate(points):
        log(f"[{index + 1}/{len(points)}] {point.label()} (at {time.perf_counter() - start:.0f} s)")
        try:
            records.extend(run_point(point, args, jax.random.fold_in(base_key, index), device, log))
        except KeyboardInterrupt:
            log("interrupted: reporting the grid points done so far")
            return done, records, False
        done.append(point)
    log(f"done: {len(points)} grid points in {time.perf_counter() - start:.0f} s")
    return done, records, True


# ----------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_revision() -> str:
    """`git rev-parse --short HEAD` in the package's directory, then the working directory; else 'unknown'."""
    for where in (os.path.dirname(os.path.realpath(__file__)), os.getcwd()):
        try:
            out = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return "unknown"


def command_line(argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join([PROG, *map(shlex.quote, args)]) if args else PROG


def collect_meta(args: argparse.Namespace, argv: Sequence[str] | None, complete: bool) -> dict:
    device = jax.devices()[0]
    plugins = {name: v for name in ("jax-cuda12-plugin", "jax-cuda13-plugin")
               if (v := _package_version(name)) is not None}
    return {
        "device": device.device_kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "jax": jax.__version__,
        "jaxlib": _package_version("jaxlib") or getattr(getattr(jax, "lib", None), "__version__", "unknown"),
        "cuda_plugins": plugins,
        "jax_fa3": jax_fa3.__version__,
        "jax_fa3_cuda_kernels": jax_fa3.WITH_CUDA,
        "revision": args.revision or git_revision(),
        "python": sys.version.split()[0],
        "command": command_line(argv),
        "complete": complete,
        "settings": {
            "total_tokens": args.total_tokens, "hidden": args.hidden, "iters": args.iters, "warmup": args.warmup,
            "min_sample_ms": args.min_sample_ms, "input_sets": args.input_sets, "seed": args.seed,
            "sustained_ms": args.sustained_ms,
            "xla_max_seqlen": args.xla_max_seqlen, "check": args.check, "check_rtol": args.check_rtol,
            "impls": list(args.impls), "modes": list(args.modes),
            **({"fa3_lib": args.fa3_lib} if "fa3" in args.impls else {}),
        },
    }


# ----------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return NA if value is None else format(value, spec)


def format_check(rec: dict) -> str:
    """'out 3.9e-03 grad 7.8e-03' (max abs diffs vs jax_fa3), plus the flag when suspicious."""
    parts = []
    if rec.get("check_out_max_abs_diff") is not None:
        parts.append(f"out {rec['check_out_max_abs_diff']:.1e}")
    if rec.get("check_grad_max_abs_diff") is not None:
        parts.append(f"grad {rec['check_grad_max_abs_diff']:.1e}")
    status = rec.get("check", "")
    if status and status != "ok":
        parts.append(status)
    return " ".join(parts)


def check_cell(recs: dict[str, dict]) -> str:
    """The table's check column: 'xla 3.9e-03/7.8e-03' (out/grad max abs diff vs jax_fa3) per implementation."""
    parts = []
    own = recs.get("jax_fa3", {}).get("check", "")
    if own:
        parts.append(f"jax_fa3 {own}!")
    for impl, rec in recs.items():
        if impl == "jax_fa3" or not rec["check"]:
            continue
        diffs = "/".join(NA if rec[f] is None else f"{rec[f]:.1e}"
                         for f in ("check_out_max_abs_diff", "check_grad_max_abs_diff"))
        parts.append(f"{impl} {diffs}" + ("" if rec["check"] == "ok" else f" {rec['check']}!"))
    return "; ".join(parts) or "-"


def _fmt_tflops(value: float | None) -> str:
    if value is None:
        return NA
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def _metric_columns(modes: Sequence[str], with_ms: bool) -> list[tuple[str, Callable[[dict], str]]]:
    cols = []
    if with_ms and "fwd" in modes:
        cols.append(("fwd ms", lambda r: _fmt(r["fwd_ms"], ".3f")))
    if with_ms and "fwdbwd" in modes:
        cols.append(("f+b ms", lambda r: _fmt(r["fwdbwd_ms"], ".3f")))
    if with_ms and "bwd" in modes:
        cols.append(("bwd ms", lambda r: _fmt(r["bwd_ms"], ".3f")))
    if "fwd" in modes:
        cols.append(("fwd TF/s", lambda r: _fmt_tflops(r["fwd_tflops"])))
    if "fwdbwd" in modes:
        cols.append(("f+b TF/s", lambda r: _fmt_tflops(r["fwdbwd_tflops"])))
    if _has_bwd(modes):
        cols.append(("bwd TF/s", lambda r: _fmt_tflops(r["bwd_tflops"])))
    return cols


def _has_bwd(modes: Sequence[str]) -> bool:
    """Whether a backward throughput exists: timed alone, or derived from fwd+bwd minus fwd."""
    return "bwd" in modes or ("fwd" in modes and "fwdbwd" in modes)


def _bwd_method(modes: Sequence[str]) -> str:
    return ("2.5× fwd FLOPs / backward time (the backward timed alone)" if "bwd" in modes
            else "2.5× fwd FLOPs / (fwd+bwd time − fwd time)")


def _point_columns() -> list[tuple[str, Callable[[Point], str]]]:
    return [
        ("seqlen", lambda p: str(p.seqlen)),
        ("hdim", lambda p: str(p.head_dim)),
        ("causal", lambda p: "yes" if p.causal else "no"),
        ("dtype", lambda p: p.dtype),
        ("batch", lambda p: str(p.batch)),
        ("heads", lambda p: str(p.heads)),
    ]


def _by_point(records: Sequence[dict]) -> dict[tuple, dict[str, dict]]:
    table: dict[tuple, dict[str, dict]] = {}
    for rec in records:
        key = (rec["seqlen"], rec["head_dim"], rec["causal"], rec["dtype"])
        table.setdefault(key, {})[rec["impl"]] = rec
    return table


Table = tuple[list[tuple[str, str]], list[list[str]]]  # headers as (group, name), rows of cells


def results_table(points: Sequence[Point], records: Sequence[dict], impls: Sequence[str],
                  modes: Sequence[str], check: bool, with_ms: bool = True) -> Table:
    """Headers as (group, name) and string rows: one row per grid point, columns per implementation.

    Median times in ms (with_ms), fwd / fwd+bwd / bwd TFLOP/s, and with check
    the max abs diffs of the other implementations from jax_fa3 (out/grad).
    """
    by_point = _by_point(records)
    headers = [("", name) for name, _ in _point_columns()]
    metric_cols = _metric_columns(modes, with_ms)
    for impl in impls:
        headers += [(impl, name) for name, _ in metric_cols]
    with_check = check and "jax_fa3" in impls
    if with_check:
        headers.append(("", "check: max abs diff vs jax_fa3 (out/grad)"))
    rows = []
    for point in points:
        recs = by_point.get((point.seqlen, point.head_dim, point.causal, point.dtype), {})
        row = [fn(point) for _, fn in _point_columns()]
        for impl in impls:
            row += [fn(recs[impl]) if impl in recs else NA for _, fn in metric_cols]
        if with_check:
            row.append(check_cell(recs))
        rows.append(row)
    return headers, rows


def _per_mode_table(points: Sequence[Point], records: Sequence[dict], impls: Sequence[str], modes: Sequence[str],
                    label: Callable[[str], str], cell: Callable[[dict, str], str | None]) -> Table:
    """Point columns, then a column per (implementation, mode) holding cell(record, mode), n/a where None."""
    by_point = _by_point(records)
    headers = [("", name) for name, _ in _point_columns()[:4]]
    for impl in impls:
        headers += [(impl, label(m)) for m in modes]
    rows = []
    for point in points:
        recs = by_point.get((point.seqlen, point.head_dim, point.causal, point.dtype), {})
        row = [fn(point) for _, fn in _point_columns()[:4]]
        for impl in impls:
            for mode in modes:
                text = cell(recs[impl], mode) if impl in recs else None
                row.append(NA if text is None else text)
        rows.append(row)
    return headers, rows


def times_table(points: Sequence[Point], records: Sequence[dict], impls: Sequence[str],
                modes: Sequence[str]) -> Table:
    """Median / min milliseconds per implementation and mode."""
    def cell(rec: dict, mode: str) -> str | None:
        ok = rec[f"{mode}_status"] == "ok"
        return f"{rec[f'{mode}_ms']:.3f} / {rec[f'{mode}_ms_min']:.3f}" if ok else None

    return _per_mode_table(points, records, impls, modes, lambda m: f"{MODE_LABELS[m]} ms", cell)


def sustained_table(points: Sequence[Point], records: Sequence[dict], impls: Sequence[str],
                    modes: Sequence[str]) -> Table:
    """--sustained-ms: TFLOP/s / median ms per implementation and mode."""
    def cell(rec: dict, mode: str) -> str | None:
        ms = rec[f"{mode}_sustained_ms"]
        return None if ms is None else f"{_fmt_tflops(rec[f'{mode}_sustained_tflops'])} / {ms:.3f}"

    return _per_mode_table(points, records, impls, modes, lambda m: MODE_LABELS[m], cell)


def _groups(headers: Sequence[tuple[str, str]]) -> list[tuple[str, int, int]]:
    """(group name, first column, end column) for runs of columns sharing a group."""
    spans, i = [], 0
    while i < len(headers):
        j = i
        while j < len(headers) and headers[j][0] == headers[i][0]:
            j += 1
        spans.append((headers[i][0], i, j))
        i = j
    return spans


def render_text(headers: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]]) -> str:
    """Aligned plain-text table with a line of group names above the column names."""
    widths = [max([len(name), *(len(row[i]) for row in rows)]) for i, (_, name) in enumerate(headers)]
    spans = _groups(headers)
    for group, i, j in spans:  # widen a group whose name is longer than its columns
        width = sum(widths[i:j]) + 2 * (j - i - 1)
        if group and len(group) > width:
            widths[j - 1] += len(group) - width

    def cells(values):
        return "  ".join(v.ljust(w) if h[1].startswith("check") else v.rjust(w)
                         for v, w, h in zip(values, widths, headers)).rstrip()

    group_line = "  ".join(group.center(sum(widths[i:j]) + 2 * (j - i - 1), "-" if group else " ")
                           for group, i, j in spans).rstrip()
    return "\n".join([group_line, cells([name for _, name in headers]), *(cells(row) for row in rows)])


def render_markdown(headers: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    names = [f"{g} {n}".strip() for g, n in headers]
    return "\n".join([line(names), "|" + "|".join("---:" for _ in names) + "|", *(line(row) for row in rows)])


def na_notes(records: Sequence[dict]) -> list[str]:
    """One line per (implementation, reason): where it was n/a."""
    groups: dict[tuple[str, str], dict] = {}
    for rec in records:
        for mode in MODES:
            if rec[f"{mode}_status"] != NA:
                continue
            g = groups.setdefault((rec["impl"], rec[f"{mode}_note"]), {"modes": [], "points": set()})
            if mode not in g["modes"]:
                g["modes"].append(mode)
            g["points"].add((rec["seqlen"], rec["head_dim"], rec["causal"], rec["dtype"]))
    lines = []
    for (impl, reason), g in groups.items():
        pts = g["points"]
        where = ", ".join([
            "seqlen " + ",".join(str(s) for s in sorted({p[0] for p in pts})),
            "head_dim " + ",".join(str(d) for d in sorted({p[1] for p in pts})),
            "causal " + ",".join("yes" if c else "no" for c in sorted({p[2] for p in pts})),
            "dtype " + ",".join(sorted({p[3] for p in pts})),
        ])
        lines.append(f"{impl} {'+'.join(g['modes'])} n/a at {len(pts)} point(s) ({where}): {reason}")
    return lines


def check_notes(records: Sequence[dict]) -> list[str]:
    """Lines for every suspicious check result."""
    lines = []
    for rec in records:
        status = rec.get("check", "")
        if status and status != "ok":
            causal = "causal" if rec["causal"] else "non-causal"
            point = f"seqlen {rec['seqlen']} head_dim {rec['head_dim']} {causal} {rec['dtype']}"
            target = "jax_fa3" if rec["impl"] == "jax_fa3" else f"jax_fa3 vs {rec['impl']}"
            lines.append(f"{target} at {point}: {format_check(rec)}")
    return lines


def check_summary(records: Sequence[dict], rtol: float) -> tuple[str, list[str]]:
    """(one-line verdict, suspicious results) of the correctness check."""
    if not any(r["impl"] == "jax_fa3" for r in records):
        return "not run (jax_fa3 is not among the implementations)", []
    suspicious = check_notes(records)
    compared = sum(1 for r in records if r["impl"] != "jax_fa3" and r["check"])
    if suspicious:
        return (f"SUSPICIOUS: {len(suspicious)} result(s) differ from the other implementations by more than "
                f"{rtol} x their max magnitude, or are not finite", suspicious)
    if not compared:
        return "nothing compared (no other implementation ran where jax_fa3 did)", []
    return (f"{compared} comparison(s) with jax_fa3, all within {rtol} x the reference's max magnitude "
            "(max abs diffs in the check column)", [])


def text_report(points, records, args) -> str:
    headers, rows = results_table(points, records, args.impls, args.modes, args.check)
    parts = [render_text(headers, rows)]
    notes = na_notes(records)
    if notes:
        parts.append("n/a:\n" + "\n".join("  " + n for n in notes))
    if args.check:
        verdict, suspicious = check_summary(records, args.check_rtol)
        parts.append("\n  ".join([f"check: {verdict}", *suspicious]))
    return "\n".join(parts)


def markdown_report(points, records, args, meta) -> str:
    plugins = ", ".join(f"{k} {v}" for k, v in meta["cuda_plugins"].items())
    header = [
        "# jax_fa3 attention benchmark",
        "",
        f"- Device: {meta['device']} ({meta['platform']}, {meta['device_count']} device(s))",
        f"- Date: {meta['date_utc']}",
        f"- jax {meta['jax']}, jaxlib {meta['jaxlib']}" + (f", {plugins}" if plugins else ""),
        f"- jax_fa3 {meta['jax_fa3']} (CUDA kernels built: {meta['jax_fa3_cuda_kernels']}), "
        f"git revision {meta['revision']}, Python {meta['python']}",
        f"- Command: `{meta['command']}`",
        f"- Grid: total tokens {args.total_tokens} (batch = {args.total_tokens} // seqlen), hidden {args.hidden} "
        f"(heads = {args.hidden} // head_dim)",
        f"- Timing: {args.warmup} warm-up call(s), median (min) of {args.iters} samples of >= {args.min_sample_ms} ms "
        f"of back-to-back calls over {args.input_sets} random input sets; at each point and mode the "
        "implementations' samples are taken in turns, each following every other one equally often",
        "- FLOPs: fwd 4·b·s²·h·d (halved when causal); fwd+bwd TF/s = 3.5× fwd FLOPs / fwd+bwd time; "
        f"bwd TF/s = {_bwd_method(args.modes)}",
    ]
    if args.sustained_ms > 0:
        header.append(f"- Sustained: then each implementation alone, {args.sustained_ms:g} ms of its calls back to "
                      f"back and the median of {args.iters} more samples (the clock settled on its own draw)")
    if not meta["complete"]:
        header.append("- **Interrupted**: only the grid points run before the interruption are listed")
    headers, rows = results_table(points, records, args.impls, args.modes, args.check, with_ms=False)
    t_headers, t_rows = times_table(points, records, args.impls, args.modes)
    parts = ["\n".join(header), "## Throughput (TFLOP/s, from median times)", render_markdown(headers, rows),
             "## Times in ms (median / min)", render_markdown(t_headers, t_rows)]
    if args.sustained_ms > 0:
        parts += ["## Sustained: each implementation alone (TFLOP/s / ms)",
                  render_markdown(*sustained_table(points, records, args.impls, args.modes))]
    notes = na_notes(records)
    if notes:
        parts.append("## n/a\n\n" + "\n".join(f"- {n}" for n in notes))
    if args.check:
        verdict, suspicious = check_summary(records, args.check_rtol)
        parts.append("## Correctness check\n\n" + verdict + "".join(f"\n- **{c}**" for c in suspicious))
    return "\n\n".join(parts) + "\n"


CSV_FIELDS = (
    "seqlen", "head_dim", "causal", "dtype", "batch", "heads", "impl", "fwd_flops",
    "fwd_status", "fwd_ms", "fwd_ms_min", "fwd_calls_per_sample", "fwd_first_call_s", "fwd_note",
    "fwdbwd_status", "fwdbwd_ms", "fwdbwd_ms_min", "fwdbwd_calls_per_sample", "fwdbwd_first_call_s", "fwdbwd_note",
    "bwd_status", "bwd_ms", "bwd_ms_min", "bwd_calls_per_sample", "bwd_first_call_s", "bwd_note",
    "fwd_tflops", "fwdbwd_tflops", "bwd_tflops", "bwd_derived_ms", "bwd_derived_tflops",
    "fwd_sustained_ms", "fwdbwd_sustained_ms", "bwd_sustained_ms",
    "fwd_sustained_tflops", "fwdbwd_sustained_tflops", "bwd_sustained_tflops",
    "check", "check_out_max_abs_diff", "check_out_ref_max_abs", "check_grad_max_abs_diff", "check_grad_ref_max_abs",
)


def write_csv(path: str, records: Sequence[dict]) -> None:
    """One row per (grid point, implementation); unmeasured numbers are 'n/a' with the reason in *_note."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for rec in records:
            writer.writerow({k: (NA if rec.get(k) is None else rec[k]) for k in CSV_FIELDS})


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str, meta: dict, records: Sequence[dict]) -> None:
    with open(path, "w") as f:
        json.dump(_json_safe({"meta": meta, "results": list(records)}), f, indent=1)
        f.write("\n")


def write_plot(path: str, points: Sequence[Point], records: Sequence[dict], args, meta: dict) -> None:
    """TFLOP/s vs seqlen: a subplot row per (head_dim, causal), fwd and bwd panels, a line per impl and dtype."""
    from matplotlib.figure import Figure  # lazy: matplotlib is optional

    panels = []
    if "fwd" in args.modes:
        panels.append(("fwd_tflops", "forward"))
    if _has_bwd(args.modes):
        panels.append(("bwd_tflops", "backward"))
    elif "fwdbwd" in args.modes:
        panels.append(("fwdbwd_tflops", "forward + backward"))
    row_keys = sorted({(p.head_dim, p.causal) for p in points})
    fig = Figure(figsize=(6 * len(panels), 3.4 * len(row_keys) + 0.8), layout="constrained")
    axes = fig.subplots(len(row_keys), len(panels), squeeze=False)
    colors = {"jax_fa3": "tab:red", "cudnn": "tab:green", "xla": "tab:blue"}
    styles = {"bf16": ("-", "o"), "fp16": ("--", "s")}
    seqlens = sorted({p.seqlen for p in points})
    for r, (head_dim, causal) in enumerate(row_keys):
        for c, (field, title) in enumerate(panels):
            ax = axes[r][c]
            for impl in args.impls:
                for dtype in args.dtypes:
                    pts = sorted((rec["seqlen"], rec[field]) for rec in records
                                 if rec["impl"] == impl and rec["dtype"] == dtype and rec["head_dim"] == head_dim
                                 and rec["causal"] == causal and rec[field] is not None)
                    if not pts:
                        continue
                    line, marker = styles.get(dtype, ("-", "o"))
                    ax.plot([s for s, _ in pts], [t for _, t in pts], line, marker=marker, color=colors.get(impl),
                            label=f"{impl} {dtype}")
            ax.set_xscale("log", base=2)
            ax.set_xticks(seqlens)
            ax.set_xticklabels([f"{s // 1024}k" if s >= 1024 and s % 1024 == 0 else str(s) for s in seqlens])
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.set_title(f"{title}, head_dim {head_dim}, {'causal' if causal else 'non-causal'}", fontsize=10)
            ax.set_xlabel("seqlen")
            ax.set_ylabel("TFLOP/s")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.suptitle(f"Attention TFLOP/s on {meta['device']} (hidden {args.hidden}, {args.total_tokens} tokens)")
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------


def run(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark for a command line (sys.argv[1:] when None); returns {'meta', 'results'}."""
    args = parse_args(argv)
    if "fa3" in args.impls:
        load_fa3(args.fa3_lib)

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    points, records, complete = run_grid(args, log)
    meta = collect_meta(args, argv, complete)
    print(f"{meta['device']} | jax {meta['jax']} | jax_fa3 {meta['jax_fa3']} @ {meta['revision']} | {meta['date_utc']}")
    print(text_report(points, records, args))
    outputs = [(args.csv, lambda p: write_csv(p, records)),
               (args.json, lambda p: write_json(p, meta, records)),
               (args.markdown, lambda p: _write_text(p, markdown_report(points, records, args, meta))),
               (args.plot, lambda p: write_plot(p, points, records, args, meta))]
    for path, write in outputs:
        if not path:
            continue
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            write(path)
            print(f"wrote {path}")
        except ImportError as exc:
            print(f"not written {path}: {short_error(exc)} (pip install matplotlib)", file=sys.stderr)
    return {"meta": meta, "results": records}


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def main(argv: Sequence[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
