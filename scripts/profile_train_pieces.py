"""Profile: the pieces of one training step alone, justrl_jax against PyTorch, at one sequence length.

Each piece runs forward + backward on its own (jitted on the JAX side), on the benchmark model's shapes
(vocab 32,000, hidden 256, 8/2 heads of 32, MLP 1,024), one row of ``--tokens`` positions of which the
last ``--scored`` are scored by the loss. For every piece it prints the median wall time and the
process CPU time (user + sys, all threads) per call: CPU / wall near 1 means the piece ran on one core.
On a shared machine compare CPU seconds and the ratio of the two sides, not wall seconds across runs.

Usage::

    python scripts/profile_train_pieces.py                       # T = 8,448, 8,192 scored
    python scripts/profile_train_pieces.py --pieces loss --chunk 2048
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx

from justrl_jax.losses import LossConfig, fused_policy_loss
from justrl_jax.model.attention import self_attention
from justrl_jax.model.qwen2 import DecoderLayer, Qwen2Config
from justrl_jax.optim import OptimConfig, make_optimizer

PIECES = ("attention", "mlp", "projections", "layer", "layer_remat", "loss", "adamw")


def _timed(fn, iters: int) -> tuple[float, float]:
    fn()  # compile / warm up
    walls, cpus = [], []
    for _ in range(iters):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def _jax_fn(f, *args):
    jf = jax.jit(f)
    return lambda: jax.block_until_ready(jf(*args))


def jax_pieces(args, cfg: Qwen2Config):
    t, d, n, k, h = args.tokens, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, t, d)), jnp.float32)
    seg = jnp.ones((1, t), jnp.int32)
    pos = jnp.arange(t)[None]

    def attention():
        q = jnp.asarray(rng.standard_normal((1, t, n, h)), jnp.float32)
        kk = jnp.asarray(rng.standard_normal((1, t, k, h)), jnp.float32)
        v = jnp.asarray(rng.standard_normal((1, t, k, h)), jnp.float32)
        return _jax_fn(
            jax.grad(lambda q, kk, v: jnp.sum(self_attention(q, kk, v, seg, args.attention) ** 2), (0, 1, 2)), q, kk, v
        )

    def module_grad(module, call):
        graphdef, params = nnx.split(module, nnx.Param)

        def f(params, x):
            return jnp.sum(call(nnx.merge(graphdef, params), x) ** 2)

        return _jax_fn(jax.grad(f, (0, 1)), params, x)

    layer = DecoderLayer(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.float32, compute_dtype=jnp.float32)

    def projections(attn, x):
        q = attn._project(x, attn.q_kernel, attn.q_bias)
        kk = attn._project(x, attn.k_kernel, attn.k_bias)
        v = attn._project(x, attn.v_kernel, attn.v_bias)
        o = jnp.einsum("BTNH,NHD->BTD", q, attn.o_kernel[...])
        return o + jnp.sum(kk) + jnp.sum(v)

    def whole_layer(remat):
        from justrl_jax.model.attention import REMAT_POLICY

        def call(lay, x):
            fwd = lambda lay, x: lay(x, pos, seg, None, 0, args.attention)[0]  # noqa: E731
            return (nnx.remat(fwd, policy=REMAT_POLICY) if remat else fwd)(lay, x)

        return module_grad(layer, call)

    def loss():
        w = jnp.asarray(rng.standard_normal((d, cfg.vocab_size)) * 0.02, jnp.float32)
        tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (1, t)), jnp.int32)
        old = jnp.asarray(rng.uniform(-11, -9, (1, t)), jnp.float32)
        mask = (jnp.arange(t) >= t - args.scored).astype(jnp.float32)[None]
        adv = jnp.ones((1,), jnp.float32)

        def f(x, w):  # with its metrics, as the train step uses it (they need the entropy)
            return fused_policy_loss(x, w, tokens, old, adv, mask, LossConfig(), args.chunk, start=t - args.scored)

        return _jax_fn(jax.grad(f, (0, 1), has_aux=True), x, w)

    def adamw():
        model_params = {
            "emb": jnp.zeros((cfg.vocab_size, d)),
            "head": jnp.zeros((d, cfg.vocab_size)),
            "layers": jnp.zeros((cfg.num_layers, (cfg.num_params() - 2 * cfg.vocab_size * d) // cfg.num_layers)),
        }
        tx = make_optimizer(OptimConfig(warmup_steps=0))
        state = tx.init(model_params)

        def f(p, s):
            g = jax.tree.map(lambda a: a + 1e-3, p)
            u, s = tx.update(g, s, p)
            return jax.tree.map(jnp.add, p, u), s

        return _jax_fn(f, model_params, state)

    makers = {
        "attention": attention,
        "mlp": lambda: module_grad(layer.mlp, lambda m, x: m(x)),
        "projections": lambda: module_grad(layer.attn, projections),
        "layer": lambda: whole_layer(False),
        "layer_remat": lambda: whole_layer(True),
        "loss": loss,
        "adamw": adamw,
    }
    return _time_pieces("jax  ", makers, args)


def _time_pieces(side: str, makers: dict, args) -> dict[str, tuple[float, float]]:
    """Build and time each asked-for piece in turn: {name: (wall s, CPU s)}."""
    out = {}
    for name in args.pieces:
        out[name] = _timed(makers[name](), args.iters)
        print(f"{side} {name:12s} wall {out[name][0]:6.3f} s  cpu {out[name][1]:6.3f} s", flush=True)
    return out


def torch_pieces(args, cfg: Qwen2Config):
    import transformers
    from transformers.models.qwen2 import modeling_qwen2 as mq

    t, d, n, k, h, v = args.tokens, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size
    hf = transformers.Qwen2Config(
        vocab_size=v,
        hidden_size=d,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=1,
        num_attention_heads=n,
        num_key_value_heads=k,
        max_position_embeddings=max(4096, t),
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    layer = mq.Qwen2DecoderLayer(hf, 0).float()
    rotary = mq.Qwen2RotaryEmbedding(hf)
    x = torch.randn(1, t, d, requires_grad=True)
    pos = torch.arange(t)[None]

    def attention():
        q = torch.randn(1, n, t, h, requires_grad=True)
        kk = torch.randn(1, k, t, h, requires_grad=True)
        vv = torch.randn(1, k, t, h, requires_grad=True)

        def f():
            o = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=True)
            (o**2).sum().backward()

        return f

    def module(call):
        def f():
            (call(x) ** 2).sum().backward()

        return f

    def projections(x):
        a = layer.self_attn
        return a.o_proj(a.q_proj(x)) + a.k_proj(x).sum() + a.v_proj(x).sum()

    def whole_layer(x):
        return layer(x, position_embeddings=rotary(x, pos), attention_mask=None, position_ids=pos)

    def loss():
        head = torch.nn.Linear(d, v, bias=False)
        tokens = torch.randint(0, v, (1, t))
        old = torch.empty(1, t).uniform_(-11, -9)
        mask = (torch.arange(t) >= t - args.scored).float()[None]
        c = LossConfig()

        def f():  # the benchmark's PyTorch GRPO loss: logits of every position, as transformers does
            logits = head(x).float()
            logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, tokens[:, 1:, None])[..., 0]
            ratio = torch.exp(logp - old[:, 1:])
            a = 1.0
            l1 = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1 - c.clip_low, 1 + c.clip_high))
            m = mask[:, 1:]
            ((l1 * m).sum() / m.sum()).backward()

        return f

    def adamw():
        params = [
            torch.nn.Parameter(torch.zeros(v, d)),
            torch.nn.Parameter(torch.zeros(d, v)),
            torch.nn.Parameter(torch.zeros(cfg.num_layers, (cfg.num_params() - 2 * v * d) // cfg.num_layers)),
        ]
        opt = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.1)
        for p in params:
            p.grad = torch.full_like(p, 1e-3)

        def f():
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        return f

    makers = {
        "attention": attention,
        "mlp": lambda: module(layer.mlp),
        "projections": lambda: module(projections),
        "layer": lambda: module(whole_layer),
        "layer_remat": lambda: module(lambda x: torch.utils.checkpoint.checkpoint(whole_layer, x, use_reentrant=False)),
        "loss": loss,
        "adamw": adamw,
    }
    return _time_pieces("torch", makers, args)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8448)
    ap.add_argument("--scored", type=int, default=8192)
    ap.add_argument("--chunk", type=int, default=512, help="justrl_jax logp chunk")
    ap.add_argument("--attention", default="blockwise")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--pieces", default=",".join(PIECES))
    ap.add_argument("--side", default="both", choices=("both", "jax", "torch"))
    args = ap.parse_args()
    args.pieces = args.pieces.split(",")
    for p in args.pieces:
        if p not in PIECES:
            ap.error(f"unknown piece {p!r}; choose from {PIECES}")
    shape = {"hidden_size": 256, "intermediate_size": 1024, "num_heads": 8, "num_kv_heads": 2, "head_dim": 32}
    cfg = Qwen2Config(vocab_size=32000, num_layers=4, **shape)
    print(
        f"T={args.tokens}, scored {args.scored}, chunk {args.chunk}, attention {args.attention}; "
        f"jax x{jax.device_count()} {jax.devices()[0].platform}, torch {torch.get_num_threads()} threads"
    )
    res = {}
    if args.side in ("both", "jax"):
        res["jax"] = jax_pieces(args, cfg)
    if args.side in ("both", "torch"):
        res["torch"] = torch_pieces(args, cfg)
    if len(res) == 2:
        for name in args.pieces:
            (jw, jc), (tw, tc) = res["jax"][name], res["torch"][name]
            print(f"{name:12s} jax/torch wall {jw / tw:5.2f}  cpu {jc / tc:5.2f}")


if __name__ == "__main__":
    main()
