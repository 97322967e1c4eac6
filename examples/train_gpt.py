"""Train a small GPT (decoder-only transformer, Flax NNX) with jax_fa3 attention.

The data is made here, no downloads: a synthetic language (a random lexicon of
"words" chained by a sparse Markov chain), and every training sequence is a
span of that language followed by a repeat of the same span. The first half
teaches the lexicon and word statistics; the second half can be predicted
exactly by attending back half a sequence (a copy / induction task), which is
what attention is for. The loss falls from ln(vocab) as the model learns both.

    python examples/train_gpt.py                       # CPU: a tiny model, about a minute
    python examples/train_gpt.py --config gpu          # H100: 12 layers, width 768, seqlen 4096, bf16
    python examples/train_gpt.py --config gpu --attention cudnn --json cudnn.json

``--attention`` picks the attention of the same model: ``jax_fa3`` (the
kernels), or ``cudnn``/``xla`` through ``jax.nn.dot_product_attention``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import jax_fa3.flax as jf


@dataclasses.dataclass(frozen=True)
class Config:
    layers: int
    width: int
    heads: int
    kv_heads: int
    seqlen: int
    batch: int
    steps: int
    lr: float
    dtype: str  # computation dtype of the model; parameters are float32
    vocab: int = 128
    words: int = 512  # lexicon size of the synthetic language
    remat: bool = False


CONFIGS = {
    # A tiny model on 2k tokens per step: about a minute on a 2-core CPU.
    "cpu": Config(layers=2, width=128, heads=4, kv_heads=2, seqlen=64, batch=32, steps=250, lr=3e-3,
                  dtype="float32", vocab=64, words=128),
    # GPT-2-small-like body (~79M parameters), 32k tokens per step, long context.
    "gpu": Config(layers=12, width=768, heads=12, kv_heads=4, seqlen=4096, batch=8, steps=300, lr=1e-3,
                  dtype="bfloat16"),
}


# ----------------------------------------------------------------------------
# Data: a synthetic language, and sequences that repeat their first half
# ----------------------------------------------------------------------------

class SyntheticText:
    """A token stream from a random lexicon and a word-level Markov chain.

    Token 0 separates words; words are 2-6 tokens from 1..vocab-1; each word is
    followed by one of 6 successors with Zipf-like probabilities.
    """

    def __init__(self, vocab: int, num_tokens: int, seed: int, num_words: int = 512, successors: int = 6):
        rng = np.random.default_rng(seed)
        lengths = rng.integers(2, 7, num_words)
        table = np.full((num_words, 7), -1, np.int32)  # spelling + separator, -1 padded
        for w, n in enumerate(lengths):
            table[w, :n] = rng.integers(1, vocab, n)
            table[w, n] = 0
        succ = rng.integers(0, num_words, (num_words, successors))
        probs = 1.0 / np.arange(1, successors + 1)
        n_words = int(num_tokens / (lengths.mean() + 1)) + 1
        choice = rng.choice(successors, size=n_words, p=probs / probs.sum())
        words = np.empty(n_words, np.int64)
        w = 0
        for i in range(n_words):  # the chain itself is sequential; ~1 s for a million words
            w = words[i] = succ[w, choice[i]]
        tokens = table[words].reshape(-1)
        self.tokens = tokens[tokens >= 0]
        self.rng = np.random.default_rng(seed + 1)

    def batch(self, batch: int, length: int) -> np.ndarray:
        """``[batch, length]`` int32: a random span of ``ceil(length / 2)`` tokens, then its repeat."""
        half = (length + 1) // 2
        starts = self.rng.integers(0, len(self.tokens) - half, batch)
        spans = self.tokens[starts[:, None] + np.arange(half)]
        return np.concatenate([spans, spans], axis=1)[:, :length]


# ----------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------

class Block(nnx.Module):
    def __init__(self, cfg: Config, attention: str, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        init = nnx.initializers.normal(0.02)
        out_init = nnx.initializers.normal(0.02 / math.sqrt(2 * cfg.layers))
        self.norm1 = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
        self.attn = jf.MultiHeadAttention(
            cfg.heads, cfg.width, num_kv_heads=cfg.kv_heads, causal=True, use_bias=False, dtype=dtype,
            kernel_init=init, out_kernel_init=out_init, implementation=attention, rngs=rngs)
        self.norm2 = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
        self.mlp_in = nnx.Linear(cfg.width, 4 * cfg.width, use_bias=False, dtype=dtype, kernel_init=init, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * cfg.width, cfg.width, use_bias=False, dtype=dtype, kernel_init=out_init,
                                  rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.norm2(x))))


class GPT(nnx.Module):
    """Token + learned position embeddings, ``layers`` pre-norm blocks (scanned), a linear head."""

    def __init__(self, cfg: Config, attention: str, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        self.embed = nnx.Embed(cfg.vocab, cfg.width, dtype=dtype, embedding_init=nnx.initializers.normal(0.02),
                               rngs=rngs)
        self.pos = nnx.Param(0.01 * jax.random.normal(rngs.params(), (cfg.seqlen, cfg.width)))

        @nnx.split_rngs(splits=cfg.layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs):
            return Block(cfg, attention, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.norm = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(cfg.width, cfg.vocab, use_bias=False, dtype=dtype,
                               kernel_init=nnx.initializers.normal(0.02), rngs=rngs)

    def __call__(self, tokens):
        """tokens ``[batch, length]`` int -> logits ``[batch, length, vocab]`` float32."""
        x = self.embed(tokens) + self.pos[: tokens.shape[1]].astype(self.cfg.dtype)

        def block(x, layer):
            return layer(x)

        if self.cfg.remat:
            block = nnx.remat(block)
        x = nnx.scan(block, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(x, self.blocks)
        return self.head(self.norm(x)).astype(jnp.float32)


def token_losses(model, batch):
    logits = model(batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:])


@nnx.jit
def train_step(model, optimizer, batch):
    loss, grads = nnx.value_and_grad(lambda m: token_losses(m, batch).mean())(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def eval_losses(model, batch):
    return token_losses(model, batch).mean(axis=0)


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    p.add_argument("--attention", choices=["jax_fa3", "cudnn", "xla"], default="jax_fa3")
    p.add_argument("--steps", type=int, help="training steps (default: the config's)")
    p.add_argument("--batch", type=int, help="sequences per step (default: the config's)")
    p.add_argument("--seqlen", type=int, help="tokens per sequence (default: the config's)")
    p.add_argument("--layers", type=int, help="transformer blocks (default: the config's)")
    p.add_argument("--remat", action="store_true", help="rematerialise each block in the backward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default="train_gpt_loss.png", help="loss-curve PNG ('' to skip)")
    p.add_argument("--json", help="write throughput, losses and config to this JSON file")
    return p.parse_args(argv)


def flops_per_token(cfg: Config) -> float:
    """Training FLOPs per token: 6 x matmul parameters, plus causal attention (fwd + 2.5x bwd)."""
    head_dim = cfg.width // cfg.heads
    kv = cfg.kv_heads * head_dim
    per_layer = 2 * cfg.width * cfg.width + 2 * cfg.width * kv + 8 * cfg.width * cfg.width
    dense = 6 * (cfg.layers * per_layer + cfg.width * cfg.vocab)
    attention = 3.5 * cfg.layers * 2 * cfg.seqlen * cfg.width  # 4*T*d per token, halved by causality
    return dense + attention


def main(argv=None):
    args = parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("steps", "batch", "seqlen", "layers") if getattr(args, k)}
    cfg = dataclasses.replace(CONFIGS[args.config], **overrides, remat=args.remat or CONFIGS[args.config].remat)
    device = jax.devices()[0]
    if args.attention == "cudnn" and device.platform != "gpu":
        raise SystemExit("--attention cudnn needs an NVIDIA GPU (jax.nn.dot_product_attention's cuDNN backend)")
    print(f"jax {jax.__version__} on {device.device_kind} ({device.platform}); attention={args.attention}")
    print(f"config {args.config}: {cfg}")

    data = SyntheticText(cfg.vocab, num_tokens=max(2_000_000, 50 * cfg.batch * cfg.seqlen), seed=args.seed,
                         num_words=cfg.words)
    model = GPT(cfg, args.attention, rngs=nnx.Rngs(args.seed))
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(1, cfg.steps // 20), cfg.steps, cfg.lr / 10)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, b2=0.95, weight_decay=0.1))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    tokens_per_step = cfg.batch * cfg.seqlen
    print(f"{n_params / 1e6:.2f}M parameters, {tokens_per_step} tokens/step, {cfg.steps} steps; "
          f"initial loss should be near ln({cfg.vocab}) = {math.log(cfg.vocab):.2f}")

    losses = []
    start = time.perf_counter()
    t_compiled = None
    bar = tqdm(range(cfg.steps), unit="step", dynamic_ncols=True)
    for step in bar:
        batch = jnp.asarray(data.batch(cfg.batch, cfg.seqlen + 1))
        loss = float(train_step(model, optimizer, batch))  # the float() syncs: honest timing
        losses.append(loss)
        if step == 0:
            t_compiled = time.perf_counter()
            compile_s = t_compiled - start
        elif step % 5 == 0 or step == cfg.steps - 1:
            tok_s = step * tokens_per_step / (time.perf_counter() - t_compiled)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}")
    train_s = time.perf_counter() - t_compiled
    steady_steps = cfg.steps - 1
    tok_s = steady_steps * tokens_per_step / train_s if steady_steps else float("nan")
    tflops = tok_s * flops_per_token(cfg) / 1e12

    eval_batch = jnp.asarray(data.batch(cfg.batch, cfg.seqlen + 1))
    per_position = np.asarray(eval_losses(model, eval_batch))
    half = (cfg.seqlen + 2) // 2  # targets from here on are copies of the first half
    final = float(np.mean(losses[-10:]))
    result = {
        "config": dataclasses.asdict(cfg), "config_name": args.config, "attention": args.attention,
        "seed": args.seed, "device": device.device_kind, "platform": device.platform, "parameters": int(n_params),
        "compile_s": compile_s, "train_s": train_s, "tokens_per_s": tok_s,
        "step_ms": 1000 * train_s / max(1, steady_steps),
        "model_tflops_per_s": tflops, "first_loss": losses[0], "final_loss": final,
        "eval_loss_first_half": float(per_position[: half - 1].mean()),
        "eval_loss_copied_half": float(per_position[half - 1:].mean()), "losses": losses,
    }
    print(f"compile + first step {compile_s:.1f}s, then {result['step_ms']:.1f} ms/step, {tok_s:,.0f} tokens/s "
          f"(~{tflops:.2f} model TFLOP/s)")
    print(f"loss {losses[0]:.3f} -> {final:.3f} (mean of the last 10 steps); held-out batch: "
          f"{result['eval_loss_first_half']:.3f} on the first half, {result['eval_loss_copied_half']:.3f} "
          "on the copied half")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(losses, lw=1, label="training loss")
        ax.axhline(math.log(cfg.vocab), color="gray", ls=":", label=f"ln({cfg.vocab}) (uniform)")
        ax.set(xlabel="step", ylabel="cross-entropy (nats/token)",
               title=f"train_gpt --config {args.config}, attention={args.attention}, {tok_s:,.0f} tokens/s")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")
    return result


if __name__ == "__main__":
    main()
