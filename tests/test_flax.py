"""jax_fa3.flax: the NNX and Linen modules and the attention_fn adapter.

Each module is compared with Flax's own attention module (same parameters)
running the float32 reference attention at full precision, under the tests'
rule (tests/numerics.py): error <= 2 x the error of the same Flax module run at
the same precision with plain-XLA attention (bf16 matmuls, float32 softmax)
+ one rounding. This covers outputs and parameter gradients.
"""

from __future__ import annotations

import functools
import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

flax = pytest.importorskip("flax")
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

import jax_fa3  # noqa: E402
import jax_fa3.flax as jf  # noqa: E402
from jax_fa3 import reference  # noqa: E402
from jax_fa3.flax import adapter as adapter_module  # noqa: E402
from conftest import random_array  # noqa: E402
from numerics import assert_within_rule  # noqa: E402

BF16 = jnp.bfloat16
HIGHEST = "highest"
# Flax's own nnx.MultiHeadAttention, the yardstick of the GQA cases, has no
# num_kv_heads in older flax (the flax that jax 0.6 installs with).
FLAX_GQA = "num_kv_heads" in inspect.signature(nnx.MultiHeadAttention.__init__).parameters
NO_FLAX_GQA = f"flax {flax.__version__}: nnx.MultiHeadAttention has no num_kv_heads to compare GQA with"


@pytest.fixture(autouse=True)
def _on_device(device):
    with jax.default_device(device):
        yield


def ref_attention_fn(compute_dtype, causal=False, window_size=(-1, -1), softcap=0.0):
    """A Flax attention_fn computing jax_fa3.reference math with matmuls in compute_dtype."""
    def fn(query, key, value, **_):
        out, _ = reference.attention_in_dtype(query, key, value, compute_dtype, causal=causal,
                                              window_size=window_size, softcap=softcap)
        return out.astype(query.dtype)
    return fn


def flat(tree):
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def assert_close(a, b, what, rtol=2**-7):
    """Same computation, same kernel: equal up to about one rounding of bfloat16."""
    a, b = np.asarray(jnp.asarray(a, jnp.float32)), np.asarray(jnp.asarray(b, jnp.float32))
    assert a.shape == b.shape, what
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.max(np.abs(b))) + 1e-6, err_msg=what)


def flax_twin(mha, params, attn, module_dtype, attention_dtype):
    """Flax's own nnx.MultiHeadAttention (options ``mha``) holding ``params``, with the reference attention
    (options ``attn``) in ``attention_dtype``: the yardstick of the NNX module."""
    m = nnx.MultiHeadAttention(**mha, dtype=module_dtype, decode=False, rngs=nnx.Rngs(0),
                               attention_fn=ref_attention_fn(attention_dtype, **attn))
    nnx.update(m, params)
    return m


def nnx_out_and_grads(model, cotangent, *args):
    @nnx.jit
    def run(model, cotangent, *args):
        def loss(m):
            out = m(*args)
            return jnp.sum(out.astype(jnp.float32) * cotangent), out
        (_, out), grads = nnx.value_and_grad(loss, has_aux=True)(model)
        return out, nnx.state(grads)
    out, grads = run(model, cotangent, *args)
    return out, flat(grads)


def check_rule(got, ref, base, dtype=BF16, normalize_qk=False):
    (out, grads), (out_r, grads_r), (out_b, grads_b) = got, ref, base
    assert_within_rule("out", out, out_r, out_b, dtype)
    assert grads.keys() == grads_r.keys()
    for name in grads:
        assert float(jnp.max(jnp.abs(grads[name]))) > 0, f"zero gradient for {name}"
        if _is_key_bias(name) and not normalize_qk:
            _check_key_bias(name, grads, grads_r)
            continue
        terms_scale = _key_bias_terms_scale(name, grads_r) if _is_key_bias(name) else None
        assert_within_rule(f"d{name}", grads[name], grads_r[name], grads_b[name], dtype, terms_scale=terms_scale)


def _is_key_bias(name):
    return "['key']" in name and "['bias']" in name


def _check_key_bias(name, grads, grads_r):
    """Without qk normalisation the key projection's bias adds q.b to every
    score of a row, which the softmax cancels: its exact gradient is 0 and any computed value is rounding
    noise of a sum of dk, so an error ratio against XLA's noise means nothing.
    Check instead that the reference is ~0 and ours is noise-sized next to the
    value bias gradient (same number of summed terms, no cancellation)."""
    value_bias = name.replace("['key']", "['value']")
    scale = float(jnp.max(jnp.abs(grads_r[value_bias])))
    assert float(jnp.max(jnp.abs(grads_r[name]))) <= 1e-4 * scale, "reference key-bias gradient should be ~0"
    assert float(jnp.max(jnp.abs(grads[name]))) <= 0.1 * scale, f"d{name} is not noise-sized"


def _key_bias_terms_scale(name, grads_r):
    """With qk normalisation the key bias gradient is no longer 0, but it is still a sum over the tokens of
    per-token terms that nearly cancel (the softmax cancels what the bias adds to every key; only the
    normalisation breaks that): |result| is several times smaller than the terms, so the rounding of the sum is
    set by the terms. The key kernel's gradient sums the same per-token terms weighted by the (random) inputs,
    without the cancellation: its magnitude is their scale. (Measured on CPU over 12 seeds: |d key kernel| 13-23
    against |d key bias| 2.5-5.6; our error and XLA's 3e-2 to 8e-2 each.)"""
    return float(jnp.max(jnp.abs(grads_r[name.replace("['bias']", "['kernel']")])))


# (options of the module, module dtype, Lq, Lk, kv input features)
NNX_CASES = {
    "causal-gqa-bf16": (dict(num_kv_heads=2, causal=True), BF16, 24, 24, 64),
    "window-softcap-mqa-qknorm": (dict(num_kv_heads=1, causal=True, window_size=(7, 0), softcap=3.0,
                                       normalize_qk=True), BF16, 20, 20, 64),
    "cross-f32-cast": (dict(num_kv_heads=2), jnp.float32, 12, 19, 48),
    "window-bidirectional": (dict(window_size=(5, 3)), BF16, 17, 17, 64),
}


@pytest.mark.parametrize("case", list(NNX_CASES))
def test_nnx_module_matches_flax_reference(device, rng, case):
    options, dtype, lq, lk, kv_features = NNX_CASES[case]
    if "num_kv_heads" in options and not FLAX_GQA:
        pytest.skip(NO_FLAX_GQA)
    mha = dict(num_heads=4, in_features=64, qkv_features=64, in_kv_features=kv_features,
               normalize_qk=options.get("normalize_qk", False))
    if "num_kv_heads" in options:
        mha["num_kv_heads"] = options["num_kv_heads"]
    attn = {k: options[k] for k in ("causal", "window_size", "softcap") if k in options}
    model = jf.MultiHeadAttention(**mha, dtype=dtype, rngs=nnx.Rngs(int(rng.integers(1 << 30))),
                                  **{k: v for k, v in options.items() if k not in mha})
    flax_module = functools.partial(flax_twin, mha, nnx.state(model, nnx.Param), attn)

    x = random_array(rng, (2, lq, 64), jnp.float32, device)
    kv = random_array(rng, (2, lk, kv_features), jnp.float32, device) if lk != lq or kv_features != 64 else None
    dout = random_array(rng, (2, lq, 64), jnp.float32, device)
    got = nnx_out_and_grads(model, dout, x, kv)
    with jax.default_matmul_precision(HIGHEST):
        ref = nnx_out_and_grads(flax_module(jnp.float32, jnp.float32), dout, x, kv)
    base = nnx_out_and_grads(flax_module(dtype, BF16), dout, x, kv)
    assert got[0].dtype == dtype
    check_rule(got, ref, base, normalize_qk=mha["normalize_qk"])


LINEN_CASES = {
    "causal-bf16": (dict(causal=True), BF16),
    "window-softcap-f32-cast": (dict(causal=True, window_size=(6, 0), softcap=4.0, normalize_qk=True), jnp.float32),
}


@pytest.mark.parametrize("case", list(LINEN_CASES))
def test_linen_module_matches_flax_reference(device, rng, case):
    options, dtype = LINEN_CASES[case]
    attn = {k: options[k] for k in ("causal", "window_size", "softcap") if k in options}
    normalize_qk = options.get("normalize_qk", False)
    x = random_array(rng, (2, 21, 64), jnp.float32, device)
    dout = random_array(rng, (2, 21, 64), jnp.float32, device)
    model = jf.linen.MultiHeadAttention(num_heads=4, dtype=dtype, **options)
    params = model.init(jax.random.key(int(rng.integers(1 << 30))), x)

    def out_and_grads(module):
        def loss(p):
            out = module.apply(p, x)
            return jnp.sum(out.astype(jnp.float32) * dout), out
        (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return out, flat(grads)

    def flax_module(module_dtype, attention_dtype):
        return nn.MultiHeadDotProductAttention(num_heads=4, dtype=module_dtype, normalize_qk=normalize_qk,
                                               attention_fn=ref_attention_fn(attention_dtype, **attn))

    got = out_and_grads(model)
    with jax.default_matmul_precision(HIGHEST):
        ref = out_and_grads(flax_module(jnp.float32, jnp.float32))
    base = out_and_grads(flax_module(dtype, BF16))
    check_rule(got, ref, base, normalize_qk=normalize_qk)


def test_linen_gqa_matches_nnx(device, rng):
    """Linen and NNX modules hold the same parameters and compute the same function."""
    x = random_array(rng, (3, 16, 64), BF16, device)
    model = jf.MultiHeadAttention(8, 64, num_kv_heads=2, causal=True, window_size=(5, 0), dtype=BF16,
                                  rngs=nnx.Rngs(int(rng.integers(1 << 30))))
    lin = jf.linen.MultiHeadAttention(num_heads=8, num_kv_heads=2, causal=True, window_size=(5, 0), dtype=BF16)
    shapes = jax.tree.map(jnp.shape, lin.init(jax.random.key(0), x)["params"])
    params = nnx.state(model, nnx.Param).to_pure_dict()
    assert jax.tree.map(jnp.shape, params) == shapes
    assert_close(lin.apply({"params": params}, x), model(x), "linen vs nnx")


def _gqa_model(rng, **kwargs):
    return jf.MultiHeadAttention(4, 64, num_kv_heads=2, causal=True, dtype=BF16,
                                 rngs=nnx.Rngs(int(rng.integers(1 << 30))), **kwargs)


def test_transforms_jit_grad_remat_vmap(device, rng):
    model = _gqa_model(rng)
    x = random_array(rng, (2, 16, 64), jnp.float32, device)
    eager = model(x)
    assert_close(nnx.jit(lambda m, x: m(x))(model, x), eager, "nnx.jit")
    graphdef, params = nnx.split(model)
    apply = lambda p, x: nnx.merge(graphdef, p)(x)
    assert_close(jax.jit(apply)(params, x), eager, "jax.jit")

    loss = lambda p, x: jnp.sum(jnp.sin(apply(p, x).astype(jnp.float32)))
    grads = flat(jax.jit(jax.grad(loss))(params, x))
    remat = flat(jax.jit(jax.grad(jax.checkpoint(loss)))(params, x))
    nnx_remat = flat(nnx.state(nnx.grad(lambda m: jnp.sum(jnp.sin(nnx.remat(lambda m, x: m(x))(m, x)
                                                                   .astype(jnp.float32))))(model)))
    for name, g in grads.items():
        assert float(jnp.max(jnp.abs(g))) > 0, name
        assert_close(remat[name], g, f"jax.checkpoint d{name}")
        assert_close(nnx_remat[name], g, f"nnx.remat d{name}")

    xs = jnp.stack([x, 0.5 * x, -x])  # vmap over a leading axis, through jit and grad
    vout = jax.jit(jax.vmap(lambda x: apply(params, x)))(xs)
    vgrad = jax.vmap(jax.grad(lambda x: loss(params, x)))(xs)
    for i in range(3):
        assert_close(vout[i], apply(params, xs[i]), f"vmap out[{i}]")
        assert_close(vgrad[i], jax.grad(lambda x: loss(params, x))(xs[i]), f"vmap grad[{i}]")


def test_nnx_scan_over_layers(device, rng):
    layers, seed = 3, int(rng.integers(1 << 30))

    @nnx.split_rngs(splits=layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
        return jf.MultiHeadAttention(4, 64, num_kv_heads=1, causal=True, dtype=BF16, rngs=rngs)

    stack = make(nnx.Rngs(seed))
    x = random_array(rng, (2, 16, 64), jnp.float32, device)

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def run(x, layer):
        return x + layer(x).astype(jnp.float32)

    def loop(stack, x):
        graphdef, state = nnx.split(stack)
        for i in range(layers):
            x = x + nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))(x).astype(jnp.float32)
        return x

    assert_close(nnx.jit(run)(x, stack), loop(stack, x), "scan vs loop")
    grad_scan = flat(nnx.state(nnx.grad(lambda s: jnp.sum(jnp.sin(run(x, s))))(stack)))
    grad_loop = flat(nnx.state(nnx.grad(lambda s: jnp.sum(jnp.sin(loop(s, x))))(stack)))
    for name, g in grad_loop.items():
        assert g.shape[0] == layers
        assert_close(grad_scan[name], g, f"scan d{name}", rtol=2**-6)


@pytest.mark.skipif(not FLAX_GQA, reason=NO_FLAX_GQA)
@pytest.mark.parametrize("window", [(-1, 0), (4, 0)], ids=["causal", "window4"])
def test_nnx_decode_matches_full_forward(device, rng, window):
    model = _gqa_model(rng, window_size=window)
    length = 13
    x = random_array(rng, (2, length, 64), jnp.float32, device)
    full = nnx.jit(lambda m, x: m(x))(model, x)
    ref_model = nnx.MultiHeadAttention(4, 64, num_kv_heads=2, dtype=BF16, decode=False, rngs=nnx.Rngs(0),
                                       attention_fn=ref_attention_fn(jnp.float32, causal=True, window_size=window))
    nnx.update(ref_model, nnx.state(model, nnx.Param))
    with jax.default_matmul_precision(HIGHEST):
        ref = nnx.jit(lambda m, x: m(x))(ref_model, x)
    ref_model.attention_fn = ref_attention_fn(BF16, causal=True, window_size=window)
    base = nnx.jit(lambda m, x: m(x))(ref_model, x)

    model.init_cache((2, 16, 64))  # 16 slots, 13 used: unfilled slots must be ignored
    step = nnx.jit(lambda m, x: m(x, decode=True))
    tokens = jnp.concatenate([step(model, x[:, i:i + 1]) for i in range(length)], axis=1)
    assert int(model.cache_index[...]) == length
    assert_within_rule("decode one by one", tokens, ref, base, BF16)
    assert_within_rule("full forward", full, ref, base, BF16)
    model.init_cache((2, 16, 64))
    chunks = jnp.concatenate([step(model, x[:, a:b]) for a, b in ((0, 5), (5, 6), (6, length))], axis=1)
    assert_within_rule("decode in chunks", chunks, ref, base, BF16)
    # A prompt prefilled on the kernels (over a cache holding an earlier sequence), then decoded token by token.
    graphdef, state = nnx.split(model)
    lowered = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, decode=True, prefill=True)).lower(state, x[:, :9])
    assert "jax_fa3_fwd" in lowered.as_text(), "prefill does not run on the kernels"
    prefill = nnx.jit(lambda m, x: m(x, decode=True, prefill=True))
    prompt = prefill(model, x[:, :9])
    assert int(model.cache_index[...]) == 9
    tokens = jnp.concatenate([prompt] + [step(model, x[:, i:i + 1]) for i in range(9, length)], axis=1)
    assert_within_rule("prefill, then decode", tokens, ref, base, BF16)


def test_linen_decode_matches_full_forward(device, rng):
    model = jf.linen.MultiHeadAttention(num_heads=4, num_kv_heads=2, causal=True, dtype=BF16, decode=True)
    x = random_array(rng, (2, 11, 64), jnp.float32, device)
    variables = model.init(jax.random.key(int(rng.integers(1 << 30))), x)
    assert variables["cache"]["cached_key"].shape == (2, 11, 2, 16)
    full = model.clone(decode=False).apply({"params": variables["params"]}, x)
    step = jax.jit(lambda v, x: model.apply(v, x, mutable=["cache"]))
    outs = []
    for i in range(11):
        out, mutated = step(variables, x[:, i:i + 1])
        variables = {"params": variables["params"], **mutated}
        outs.append(out)
    assert_close(jnp.concatenate(outs, axis=1), full, "linen decode vs full forward", rtol=2**-6)
    # Prefill a prompt on the kernels over the filled cache, then decode the rest.
    out, mutated = jax.jit(lambda v, x: model.apply(v, x, prefill=True, mutable=["cache"]))(variables, x[:, :7])
    variables = {"params": variables["params"], **mutated}
    assert int(variables["cache"]["cache_index"]) == 7
    outs = [out]
    for i in range(7, 11):
        out, mutated = step(variables, x[:, i:i + 1])
        variables = {"params": variables["params"], **mutated}
        outs.append(out)
    assert_close(jnp.concatenate(outs, axis=1), full, "linen prefill + decode vs full forward", rtol=2**-6)


def test_dropout_rate_raises():
    with pytest.raises(ValueError, match="dropout"):
        jf.MultiHeadAttention(4, 64, dropout_rate=0.1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dropout"):
        jf.linen.MultiHeadAttention(num_heads=4, dropout_rate=0.1)
    with pytest.raises(ValueError, match="mask"):
        jf.MultiHeadAttention(4, 64, rngs=nnx.Rngs(0))(jnp.ones((1, 4, 64)), mask=jnp.ones((1, 1, 4, 4), bool))
    with pytest.raises(TypeError, match="attention_dtype"):
        jf.MultiHeadAttention(4, 64, attention_dtype=None, rngs=nnx.Rngs(0))(jnp.ones((1, 4, 64)))


def _linen_pair(rng, x, attention_fn):
    """Flax's module with the adapter, and the float32 reference / bf16 baseline of the same parameters."""
    module = nn.MultiHeadDotProductAttention(num_heads=4, dtype=BF16, attention_fn=attention_fn)
    params = module.init(jax.random.key(int(rng.integers(1 << 30))), x)
    return module, params


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_fn_in_flax_modules(device, rng, causal, recwarn):
    x = random_array(rng, (2, 18, 64), jnp.float32, device)
    fn = jf.causal_attention_fn if causal else jf.attention_fn
    module, params = _linen_pair(rng, x, fn)
    got = jax.jit(module.apply)(params, x)
    ref_module = lambda d: nn.MultiHeadDotProductAttention(num_heads=4, dtype=d,
                                                           attention_fn=ref_attention_fn(d, causal=causal))
    with jax.default_matmul_precision(HIGHEST):
        ref = ref_module(jnp.float32).apply(params, x)
    base = ref_module(BF16).apply(params, x)
    assert_within_rule("linen attention_fn", got, ref, base, BF16)
    # Flax's own attention with a causal mask computes the same function.
    flax_mask = nn.make_causal_mask(x[..., 0]) if causal else None
    with jax.default_matmul_precision(HIGHEST):
        flax_out = nn.MultiHeadDotProductAttention(num_heads=4).apply(params, x, mask=flax_mask)
    assert_within_rule("linen vs flax's own attention", got, flax_out, base, BF16)

    # nnx.MultiHeadAttention with GQA and its is_causal call argument.
    if not FLAX_GQA:
        pytest.skip(f"{NO_FLAX_GQA} (the Linen part above passed)")
    nmod = nnx.MultiHeadAttention(4, 64, num_kv_heads=2, dtype=BF16, decode=False, attention_fn=jf.attention_fn,
                                  rngs=nnx.Rngs(int(rng.integers(1 << 30))))
    got = nnx.jit(lambda m, x: m(x, is_causal=causal))(nmod, x)
    nmod.attention_fn = ref_attention_fn(jnp.float32, causal=causal)
    with jax.default_matmul_precision(HIGHEST):
        ref = nmod(x)
    nmod.attention_fn = ref_attention_fn(BF16, causal=causal)
    assert_within_rule("nnx attention_fn", got, ref, nmod(x), BF16)
    assert not [w for w in recwarn if "jax_fa3" in str(w.message)], "served calls must not warn"


def test_attention_fn_fallbacks_warn_once(device, rng, monkeypatch):
    monkeypatch.setattr(adapter_module, "_warned", set())
    x = random_array(rng, (2, 12, 64), BF16, device)
    mask = jnp.asarray(rng.random((2, 1, 12, 12)) < 0.7) | jnp.eye(12, dtype=bool)
    module, params = _linen_pair(rng, x, jf.attention_fn)
    flax_module = nn.MultiHeadDotProductAttention(num_heads=4, dtype=BF16)
    for call in (lambda p, x, m: module.apply(p, x, mask=m), jax.jit(lambda p, x, m: module.apply(p, x, mask=m))):
        monkeypatch.setattr(adapter_module, "_warned", set())
        with pytest.warns(UserWarning, match="mask.*falling back to flax.linen.dot_product_attention"):
            out = call(params, x, mask)
        assert_close(out, flax_module.apply(params, x, mask=mask), "fallback vs flax's attention")
        with warnings.catch_warnings():  # one-time: the same reason again is silent
            warnings.simplefilter("error")
            call(params, x[:, ::-1], mask)

    # A causal mask known at trace time (concrete) is recognised and served by the kernels.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module.apply(params, x, mask=nn.make_causal_mask(x[..., 0]))

    # Dropout (nnx fallback): the same output as Flax's own attention with the same rngs.
    seed = int(rng.integers(1 << 30))
    make = lambda fn: nnx.MultiHeadAttention(4, 64, dtype=BF16, dropout_rate=0.3, decode=False, rngs=nnx.Rngs(seed),
                                             attention_fn=fn)
    with pytest.warns(UserWarning, match="dropout.*flax.nnx.dot_product_attention"):
        out = make(jf.attention_fn)(x, deterministic=False)
    np.testing.assert_array_equal(np.asarray(out, np.float32),  # both eager: bitwise the same computation
                                  np.asarray(make(nnx.dot_product_attention)(x, deterministic=False), np.float32))

    # float32 with attention_dtype=None falls back to Flax's float32 attention instead of casting.
    x32 = x.astype(jnp.float32)
    f32_module = nn.MultiHeadDotProductAttention(num_heads=4, attention_fn=jf.make_attention_fn(attention_dtype=None))
    with pytest.warns(UserWarning, match="float32"):
        out = f32_module.apply(params, x32)
    np.testing.assert_allclose(out, nn.MultiHeadDotProductAttention(num_heads=4).apply(params, x32), rtol=1e-6,
                               atol=1e-6)


def ring_out_and_grads(model, cotangent, x, n, layout):
    """The module called by the n members of a ring emulated with vmap (axis "ring"), each on its shard of the
    sequence in ``layout`` order: the whole output back in order, and the parameter gradients summed."""
    graphdef, state = nnx.split(model)
    perm = jax_fa3.ring_permutation(x.shape[1], n, layout)

    def shards(a):  # [batch, seqlen, ...] in layout order -> [n, batch, seqlen / n, ...]
        a = jnp.take(a, perm, axis=1)
        return jnp.moveaxis(a.reshape(a.shape[0], n, -1, *a.shape[2:]), 1, 0)

    def member(state, x, cotangent):
        def loss(state):
            out = nnx.merge(graphdef, state)(x)
            return jnp.sum(out.astype(jnp.float32) * cotangent), out
        (_, out), grads = jax.value_and_grad(loss, has_aux=True)(state)
        return out, grads

    outs, grads = jax.jit(jax.vmap(member, in_axes=(None, 0, 0), axis_name="ring"))(
        state, shards(x), shards(cotangent))
    out = jnp.moveaxis(outs, 0, 1).reshape(x.shape[0], x.shape[1], -1)
    return jnp.take(out, np.argsort(perm), axis=1), flat(jax.tree.map(lambda g: g.sum(0), grads))


@pytest.mark.parametrize("layout, options", [("striped", dict(causal=True)),
                                             ("contiguous", dict(causal=True, window_size=(9, 0)))])
def test_nnx_module_in_a_ring(device, rng, layout, options):
    # The module inside a ring of 4 (ring_axis_name) on a shard of the sequence each, against Flax's module on
    # the whole sequence with the reference attention: the tests' error rule on the output and every gradient.
    mha = dict(num_heads=4, in_features=64, qkv_features=64)
    model = jf.MultiHeadAttention(**mha, dtype=BF16, ring_axis_name="ring", ring_layout=layout,
                                  rngs=nnx.Rngs(int(rng.integers(1 << 30))), **options)
    flax_module = functools.partial(flax_twin, mha, nnx.state(model, nnx.Param), options)

    x = random_array(rng, (2, 48, 64), jnp.float32, device)
    dout = random_array(rng, (2, 48, 64), jnp.float32, device)
    got = ring_out_and_grads(model, dout, x, 4, layout)
    with jax.default_matmul_precision(HIGHEST):
        ref = nnx_out_and_grads(flax_module(jnp.float32, jnp.float32), dout, x)
    base = nnx_out_and_grads(flax_module(BF16, BF16), dout, x)
    check_rule(got, ref, base)


def test_linen_module_in_a_ring_matches_nnx(device, rng):
    nnx_model = jf.MultiHeadAttention(4, 64, dtype=BF16, causal=True, ring_axis_name="ring", ring_layout="zigzag",
                                      rngs=nnx.Rngs(int(rng.integers(1 << 30))))
    linen_model = jf.linen.MultiHeadAttention(num_heads=4, dtype=BF16, causal=True, ring_axis_name="ring",
                                              ring_layout="zigzag")
    x = random_array(rng, (2, 32, 64), jnp.float32, device)
    perm = jax_fa3.ring_permutation(32, 4, "zigzag")
    shards = jnp.moveaxis(jnp.take(x, perm, axis=1).reshape(2, 4, 8, 64), 1, 0)
    params = nnx.state(nnx_model, nnx.Param).to_pure_dict()  # the same parameters (test_linen_gqa_matches_nnx)
    graphdef, state = nnx.split(nnx_model)
    run = lambda f: jax.jit(jax.vmap(f, axis_name="ring"))(shards)
    want = run(lambda x: nnx.merge(graphdef, state)(x))
    got = run(lambda x: linen_model.apply({"params": params}, x))
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_prefill_and_decode_arguments_are_checked(rng):
    model = jf.MultiHeadAttention(4, 64, num_kv_heads=2, causal=True, rngs=nnx.Rngs(0))
    x = random_array(rng, (1, 4, 64), jnp.float32, jax.devices("cpu")[0])
    with pytest.raises(ValueError, match="prefill=True fills the KV cache: it needs decode=True"):
        model(x, prefill=True)
    model.init_cache((1, 8, 64))
    with pytest.raises(ValueError, match="decode: 4 new tokens but keys/values for 6"):
        model(x, random_array(rng, (1, 6, 64), jnp.float32, jax.devices("cpu")[0]), decode=True)
    with pytest.raises(ValueError, match="prefill=True fills the KV cache: it needs decode=True"):
        jf.linen.MultiHeadAttention(num_heads=4, causal=True).init(jax.random.key(0), x, prefill=True)


def test_ring_options_are_checked():
    with pytest.raises(ValueError, match="ring_axis_name is only supported by implementation='jax_fa3'"):
        jf.MultiHeadAttention(4, 64, ring_axis_name="ring", implementation="xla", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="ring_layout must be one of"):
        jf.MultiHeadAttention(4, 64, ring_axis_name="ring", ring_layout="spiral", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="ring_axis_name must be a mesh axis name"):
        jf.MultiHeadAttention(4, 64, ring_axis_name=3, rngs=nnx.Rngs(0))
    model = jf.MultiHeadAttention(4, 64, ring_axis_name="ring", decode=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="decode=True with ring_axis_name"):
        model(jnp.ones((1, 4, 64), jnp.float32))
