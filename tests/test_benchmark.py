"""Smoke test of `python -m jax_fa3.benchmark` on a tiny grid (seconds on the CPU)."""

from __future__ import annotations

import collections
import csv
import importlib.util
import json
import pathlib
import sys

import jax
import pytest

try:
    from jax_fa3 import benchmark
except ImportError:  # an installed jax_fa3 older than benchmark.py: load the source tree's copy
    _path = pathlib.Path(__file__).resolve().parents[1] / "jax_fa3" / "benchmark.py"
    _spec = importlib.util.spec_from_file_location("jax_fa3.benchmark", _path)
    benchmark = importlib.util.module_from_spec(_spec)
    sys.modules["jax_fa3.benchmark"] = benchmark
    _spec.loader.exec_module(benchmark)

ON_CPU = jax.default_backend() == "cpu"
TINY = ["--total-tokens", "256", "--hidden", "128", "--seqlens", "64,128", "--head-dims", "64",
        "--dtypes", "bf16", "--iters", "2", "--warmup", "1", "--min-sample-ms", "0"]
IMPLS = ("jax_fa3", "cudnn", "xla")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One tiny run: 2 seqlens x causal yes/no, the three implementations, all three modes, every output."""
    out = tmp_path_factory.mktemp("bench")
    files = {ext: out / f"bench.{ext}" for ext in ("csv", "json", "md", "png")}
    argv = [*TINY, "--impls", ",".join(IMPLS), "--xla-max-seqlen", "64", "--revision", "testrev",
            "--csv", str(files["csv"]), "--json", str(files["json"]), "--markdown", str(files["md"]),
            "--plot", str(files["png"]), "--quiet"]
    result = benchmark.run(argv)
    return result, files, argv


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_rows(report):
    _, files, _ = report
    rows = _rows(files["csv"])
    points = {(int(r["seqlen"]), r["causal"]) for r in rows}
    assert points == {(64, "False"), (128, "False"), (64, "True"), (128, "True")}
    assert len(rows) == len(points) * len(IMPLS)
    for row in rows:
        assert int(row["batch"]) == 256 // int(row["seqlen"]) and int(row["heads"]) == 2
        assert int(row["head_dim"]) == 64 and row["dtype"] == "bf16"
        if row["impl"] == "jax_fa3" or (row["impl"] == "xla" and row["seqlen"] == "64"):
            for mode in ("fwd", "fwdbwd", "bwd"):
                assert row[f"{mode}_status"] == "ok", row
                assert float(row[f"{mode}_ms"]) > 0 and 0 < float(row[f"{mode}_ms_min"]) <= float(row[f"{mode}_ms"])
                assert float(row[f"{mode}_tflops"]) > 0
            # bwd TF/s is the backward timed alone; f+b minus fwd is kept beside it.
            flops = 2.5 * float(row["fwd_flops"])
            assert float(row["bwd_tflops"]) == pytest.approx(flops / float(row["bwd_ms"]) / 1e9)
            derived_ms = float(row["fwdbwd_ms"]) - float(row["fwd_ms"])
            assert float(row["bwd_derived_ms"]) == pytest.approx(derived_ms)
        if row["impl"] == "xla" and row["seqlen"] == "128":  # above --xla-max-seqlen
            assert row["fwd_status"] == row["fwdbwd_status"] == row["bwd_status"] == "n/a"
            assert row["fwd_ms"] == "n/a" and "xla-max-seqlen" in row["fwd_note"]
        if row["impl"] == "cudnn" and ON_CPU:  # no cuDNN on the CPU: n/a with a reason, not a crash
            assert row["fwd_status"] == row["fwdbwd_status"] == row["bwd_status"] == "n/a" and row["fwd_note"]
        if row["impl"] == "xla" and row["seqlen"] == "64":  # compared with jax_fa3 on the same inputs
            assert row["check"] == "ok", row
            assert 0 <= float(row["check_out_max_abs_diff"]) < 0.1
            assert 0 <= float(row["check_grad_max_abs_diff"]) < 0.1


def test_json(report):
    result, files, argv = report
    data = json.loads(files["json"].read_text())
    assert len(data["results"]) == 4 * len(IMPLS) == len(result["results"])
    meta = data["meta"]
    assert meta["device"] == jax.devices()[0].device_kind
    assert meta["jax"] == jax.__version__ and meta["revision"] == "testrev" and meta["complete"]
    assert meta["command"].startswith("python -m jax_fa3.benchmark --total-tokens 256")
    fa3 = [r for r in data["results"] if r["impl"] == "jax_fa3"]
    assert all(r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 and r["bwd_ms"] > 0 for r in fa3)
    assert all(r["fwd_flops"] == benchmark.fwd_flops(benchmark.Point(
        r["seqlen"], r["head_dim"], r["causal"], r["dtype"], r["batch"], r["heads"])) for r in fa3)


def test_markdown(report):
    _, files, _ = report
    text = files["md"].read_text()
    assert f"Device: {jax.devices()[0].device_kind}" in text
    assert "UTC" in text and f"jax {jax.__version__}, jaxlib " in text and "git revision testrev" in text
    assert "Command: `python -m jax_fa3.benchmark --total-tokens 256" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == 2 * 4  # throughput table and times table, one row per grid point each
    assert "cudnn" in text and "n/a" in text
    assert "bwd TF/s = 2.5× fwd FLOPs / backward time (the backward timed alone)" in text


def test_plot(report):
    pytest.importorskip("matplotlib")
    _, files, _ = report
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_forward_only_no_check(capsys):
    result = benchmark.run([*TINY, "--seqlens", "64", "--causal", "no", "--impls", "jax_fa3",
                            "--modes", "fwd", "--no-check", "--quiet"])
    (rec,) = result["results"]
    assert rec["fwd_status"] == "ok" and rec["fwd_ms"] > 0 and rec["fwdbwd_status"] == ""
    assert rec["bwd_tflops"] is None and rec["check"] == ""
    printed = capsys.readouterr().out
    assert "fwd TF/s" in printed and "bwd TF/s" not in printed


def test_backward_alone_is_checked():
    """--modes bwd times the backward alone and still compares the gradients with jax_fa3's."""
    result = benchmark.run([*TINY, "--seqlens", "64", "--causal", "yes", "--impls", "jax_fa3,xla",
                            "--modes", "bwd", "--quiet"])
    fa3, xla = result["results"]
    for rec in (fa3, xla):
        assert rec["bwd_status"] == "ok" and rec["bwd_ms"] > 0 and rec["bwd_tflops"] > 0
        assert rec["fwd_status"] == rec["fwdbwd_status"] == "" and rec["bwd_derived_ms"] is None
    assert xla["check"] == "ok" and 0 <= xla["check_grad_max_abs_diff"] < 0.1
    assert xla["check_out_max_abs_diff"] is None


def test_xla_skip_counts_the_backward_residuals():
    """The backward timed alone holds every input set's s² residuals: XLA is skipped sooner there."""

    class Device:
        def memory_stats(self):
            return {"bytes_limit": 16 * 2**30}

    args = benchmark.parse_args(["--input-sets", "3", "--xla-max-seqlen", "0"])
    point = benchmark.Point(8192, 64, False, "bf16", 1, 16)  # 4 GiB of float32 scores
    assert benchmark.xla_skip_reason(point, args, Device(), "fwdbwd") is None
    assert "6 x 4.0 GiB" in benchmark.xla_skip_reason(point, args, Device(), "bwd")


def test_grid_and_flops():
    args = benchmark.parse_args(["--seqlens", "512,1k,16k", "--head-dims", "128", "--dtypes", "bfloat16",
                                 "--causal", "yes"])
    points = benchmark.build_grid(args)
    assert [(p.seqlen, p.batch, p.heads) for p in points] == [(512, 32, 16), (1024, 16, 16), (16384, 1, 16)]
    p = points[0]
    assert p.causal and p.dtype == "bf16"
    assert benchmark.fwd_flops(p) == 4 * 32 * 512**2 * 16 * 128 / 2
    rec = benchmark.empty_record(p, "jax_fa3")
    rec.update(fwd_ms=1.0, fwdbwd_ms=3.0)
    benchmark.finish_record(rec)
    assert rec["fwd_tflops"] == pytest.approx(benchmark.fwd_flops(p) / 1e-3 / 1e12)
    assert rec["fwdbwd_tflops"] == pytest.approx(3.5 * benchmark.fwd_flops(p) / 3e-3 / 1e12)
    # Without the bwd mode the backward is fwd+bwd minus fwd ...
    assert rec["bwd_tflops"] == rec["bwd_derived_tflops"] == pytest.approx(2.5 * benchmark.fwd_flops(p) / 2e-3 / 1e12)
    # ... with it, the backward's own time.
    rec.update(bwd_ms=1.6)
    benchmark.finish_record(rec)
    assert rec["bwd_tflops"] == pytest.approx(2.5 * benchmark.fwd_flops(p) / 1.6e-3 / 1e12)
    assert rec["bwd_derived_ms"] == pytest.approx(2.0)
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--impls", "flash"])


def test_fa3_is_opt_in_and_needs_its_library():
    assert "fa3" not in benchmark.parse_args([]).impls
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--impls", "jax_fa3,fa3"])
    assert benchmark.parse_args(["--impls", "fa3", "--fa3-lib", "x.so"]).impls == ["fa3"]
    # Its backward scratch follows FlashAttention-3's tile (80 query rows at head dim 128 without a
    # mask, 64 causal): 2 x 3 heads x rows padded to the tile, semaphores per (row block, batch, head).
    dpsum, lse2, dq_accum, sem = benchmark._fa3_bwd_scratch((2, 100, 3, 128), causal=False)
    assert dpsum.shape == lse2.shape == (2 * 3 * 160,) and dq_accum.shape == (2 * 3 * 160 * 128,)
    assert sem.shape == (2 * 2 * 3,)
    assert benchmark._fa3_bwd_scratch((2, 100, 3, 128), causal=True)[0].shape == (2 * 3 * 128,)


def test_check_flags_wrong_results():
    import jax.numpy as jnp

    point = benchmark.Point(64, 64, False, "bf16", 1, 1)
    x = jnp.ones((2, 8), jnp.bfloat16)
    records = {impl: benchmark.empty_record(point, impl) for impl in ("jax_fa3", "xla")}
    outputs = {("jax_fa3", "fwd"): x, ("xla", "fwd"): x * 1.01,
               ("jax_fa3", "fwdbwd"): (x, 2 * x, x), ("xla", "fwdbwd"): (x, x, x)}
    benchmark.check_point(records, outputs, 0.05)
    assert records["xla"]["check"] == "MISMATCH grad"
    assert records["xla"]["check_grad_max_abs_diff"] == 1.0 and records["xla"]["check_out_max_abs_diff"] < 0.05
    assert "MISMATCH" in benchmark.check_cell(records)

    records = {impl: benchmark.empty_record(point, impl) for impl in ("jax_fa3", "xla")}
    benchmark.check_point(records, {("jax_fa3", "fwd"): x * jnp.nan, ("xla", "fwd"): x}, 0.05)
    assert records["jax_fa3"]["check"] == "non-finite fwd" and records["xla"]["check"] == "MISMATCH out"
    verdict, suspicious = benchmark.check_summary(list(records.values()), 0.05)
    assert verdict.startswith("SUSPICIOUS") and len(suspicious) == 2


def test_samples_interleaved():
    """Every implementation gets iters samples, taken in turns."""
    order = []

    class FakeTimer:
        def __init__(self, name):
            self.name = name

        def sample(self):
            order.append(self.name)

    benchmark.time_interleaved([FakeTimer("a"), FakeTimer("b"), FakeTimer("c")], 6)
    assert sorted(order) == ["a"] * 6 + ["b"] * 6 + ["c"] * 6
    assert all(x != y for x, y in zip(order, order[1:]))


@pytest.mark.parametrize("n, iters", [(1, 4), (2, 5), (3, 6), (3, 7), (4, 6), (5, 12)])
def test_balanced_order(n, iters):
    """Each timer iters times; where iters is a multiple of n - 1, every timer follows each other one equally
    often (counting the wrap from the last sample to the first)."""
    order = benchmark.balanced_order(n, iters)
    assert sorted(order) == sorted(list(range(n)) * iters)
    if n > 1 and iters % (n - 1) == 0:
        pairs = collections.Counter(zip(order, order[1:] + order[:1]))
        assert set(pairs) == {(a, b) for a in range(n) for b in range(n) if a != b}
        assert len(set(pairs.values())) == 1, pairs


def _recording_fn():
    """A function to time that records the inputs it is called with."""
    calls = []

    def fn(x):
        calls.append(x)
        return jax.numpy.asarray(x)

    return fn, calls


def test_timer_samples_rotate_inputs():
    fn, calls = _recording_fn()
    timer = benchmark.Timer(fn, [(0,), (1,)], warmup=2, min_sample_ms=0)
    assert timer.calls == 1 and calls == [0, 1, 0]  # first call, warm-up, one timed call
    timer.sample()
    timer.sample()
    assert calls[3:] == [0, 1]
    timing = timer.timing()
    assert len(timer.samples) == 2 and 0 < timing.min_ms <= timing.median_ms


def test_sustained_times(tmp_path):
    """--sustained-ms times each implementation alone after its settle, beside the interleaved samples."""
    md = tmp_path / "bench.md"
    result = benchmark.run([*TINY, "--seqlens", "64", "--causal", "no", "--impls", "jax_fa3,xla", "--modes", "fwd,bwd",
                            "--sustained-ms", "5", "--markdown", str(md), "--quiet"])
    for rec in result["results"]:
        for mode in ("fwd", "bwd"):
            assert rec[f"{mode}_sustained_ms"] > 0
            assert rec[f"{mode}_sustained_tflops"] == pytest.approx(
                benchmark.MODE_FLOPS[mode] * rec["fwd_flops"] / rec[f"{mode}_sustained_ms"] / 1e9)
        assert rec["fwdbwd_sustained_ms"] is None
    text = md.read_text()
    assert "## Sustained: each implementation alone" in text and "Sustained: then each implementation alone, 5 ms" in text
    # Off by default: no field filled, no section.
    rec = benchmark.run([*TINY, "--seqlens", "64", "--causal", "no", "--impls", "jax_fa3", "--modes", "fwd",
                         "--no-check", "--quiet"])["results"][0]
    assert rec["fwd_sustained_ms"] is None and rec["fwd_sustained_tflops"] is None
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--sustained-ms", "-1"])


def test_timer_sustained_keeps_samples_apart():
    fn, calls = _recording_fn()
    timer = benchmark.Timer(fn, [(0,), (1,)], warmup=1, min_sample_ms=0)
    timer.sample()
    before = len(calls)
    assert timer.sustained_ms(settle_ms=0, iters=3) > 0
    assert len(calls) == before + 3 and len(timer.samples) == 1
