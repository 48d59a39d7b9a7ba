"""Benchmark: one forward + backward + AdamW update, justrl_jax vs transformers + torch, same weights.

Both sides run the same GRPO token loss (ratio to precomputed old log-probs, clip-higher, dual clip,
token mean over completion tokens) on the same batch from the same weights, so the first losses printed
must agree. PyTorch is also timed with plain cross-entropy, for scale. The timed iterations of the three
variants are interleaved, so load from other processes on a shared machine hits them alike; each
variant's time is the median of its iterations.

Usage::

    python scripts/bench_train_step.py          # 8 x 256 tokens; vocab 32000, hidden 256, 4 layers, 8/2 heads
    python scripts/bench_train_step.py --iters 10 --chunk 256 --remat --score-prompt
    # --chunk (logits positions per chunk) defaults to TrainConfig.logp_chunk_size, the product's default
    # rows of 256 prompt + the given response lengths; JAX only, blockwise attention, packed rows:
    python scripts/bench_train_step.py --prompt 256 --batch 2 --lengths 4096,1024 --no-peer --pack --remat
    /usr/bin/time -v python scripts/bench_train_step.py --prompt 256 --batch 1 --lengths 16384 --no-peer --iters 1

With the peer, the last line reads ``ratio <justrl_jax time / pytorch time>`` (same GRPO loss; below 1 is
faster). A line ``step_s=<seconds>`` gives justrl_jax's median step time, and ``baseline_rss_gib=`` the
process's peak resident memory before the first JAX step (subtract it from ``/usr/bin/time -v``'s
maximum resident set size to get what the step itself costs; compare with ``plan_training_peak_gib=``,
the memory plan's estimate for this workload).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import time

import bench_models
import jax
import jax.numpy as jnp
import numpy as np
import torch

from justrl_jax.losses import LossConfig
from justrl_jax.model.construct import create_model
from justrl_jax.model.qwen2 import positions_from_mask
from justrl_jax.optim import OptimConfig
from justrl_jax.packing import pack_train_batch, place_sequences
from justrl_jax.train_step import TrainBatch, TrainConfig, init_train_state, make_train_step

# Measure the product as users run it: the logits chunk defaults to TrainConfig's own default.
PRODUCT_CHUNK = TrainConfig.__dataclass_fields__["logp_chunk_size"].default


def _batch(args, rng):
    """Rows [prompt | response | right padding] of width prompt + the longest response."""
    n, s = args.batch, args.seq
    tokens = rng.integers(0, args.vocab, (n, s)).astype(np.int32)
    attn = np.arange(s)[None] < (args.prompt + np.asarray(args.lengths))[:, None]
    tokens[~attn] = 0
    loss_mask = (attn & (np.arange(s)[None] >= args.prompt)).astype(np.float32)
    adv = rng.choice([-1.0, 1.0], n).astype(np.float32)
    old = rng.uniform(-11.0, -9.0, (n, s)).astype(np.float32)  # ~log(1/32000): ratios near 1
    return tokens, attn, loss_mask, adv, old


class TorchStep:
    """transformers Qwen2ForCausalLM + torch AdamW + clip_grad_norm_, GRPO token loss or plain CE."""

    def __init__(self, args, hf, optim: OptimConfig, loss: LossConfig, batch, grpo: bool):
        self.model = hf.train()
        if args.remat:  # like for like: JustRL (verl) trains with gradient checkpointing on
            if hasattr(self.model, "activation_checkpointing_enable"):  # the newer name (the old one warns)
                self.model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable({"use_reentrant": False})
        self.opt = torch.optim.AdamW(
            self.model.parameters(),
            lr=optim.lr,
            betas=(optim.b1, optim.b2),
            eps=optim.eps,
            weight_decay=optim.weight_decay,
        )
        tokens, attn, loss_mask, adv, old = batch
        device = bench_models.torch_device()
        self.tokens = torch.as_tensor(tokens, dtype=torch.long, device=device)
        self.attn = torch.as_tensor(attn, device=device).long()
        self.loss_mask, self.adv, self.old = (torch.tensor(x, device=device) for x in (loss_mask, adv, old))
        self.loss, self.grpo, self.clip = loss, grpo, optim.grad_clip
        # bf16: autocast over fp32 master weights, as the recipe's FSDP mixed precision (and justrl_jax's).
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bfloat16" else contextlib.nullcontext()
        )

    def __call__(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        with self.autocast:
            logits = self.model(input_ids=self.tokens, attention_mask=self.attn).logits.float()  # [N, S, V]
        if self.grpo:
            logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, self.tokens[:, 1:, None])[..., 0]
            ratio = torch.exp(logp - self.old[:, 1:])
            a = self.adv[:, None]
            c = self.loss
            l1 = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1 - c.clip_low, 1 + c.clip_high))
            token_loss = torch.where(a < 0, torch.minimum(l1, -a * c.dual_clip_c), l1)
            mask = self.loss_mask[:, 1:]
            loss = (token_loss * mask).sum() / mask.sum()
        else:
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), self.tokens[:, 1:].reshape(-1)
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        return loss.item()


class JaxStep:
    """justrl_jax's jitted train step (one mini-batch = one optimizer update) on the same weights."""

    def __init__(self, args, hf, optim: OptimConfig, loss: LossConfig, batch):
        compute = jnp.dtype(args.dtype)
        if hf is None:  # no peer: justrl_jax's own random init (a 1.5B model needs no torch copy)
            model = create_model(bench_models.model_config(args, args.seq), compute_dtype=compute)
        else:  # the very same weights as the peer, through the HF importer
            model = bench_models.jax_model(hf, compute_dtype=compute)
        model.attention = args.attention
        cfg = TrainConfig(
            loss=loss,
            optim=optim,
            mini_batch_size=args.batch,
            micro_batch_size=args.batch,
            logp_chunk_size=args.chunk,
            remat=args.remat,
            max_tokens_per_row=args.seq if args.pack else None,
            micro_batch_tokens=args.micro_tokens,
        )
        graphdef, self.state = init_train_state(model, optim)
        self.step = make_train_step(graphdef, cfg, None)
        if args.pack:
            self.batch = _packed(args, cfg, batch)
            return
        tokens, attn, loss_mask, adv, old = (jnp.asarray(x) for x in batch)
        # completion_start: the prompt's logits are not computed (they are not in the loss); PyTorch,
        # like transformers and verl, computes the logits of every position.
        self.batch = TrainBatch(
            tokens=tokens,
            positions=positions_from_mask(attn),
            attn_mask=attn,
            loss_mask=loss_mask,
            advantages=adv,
            old_logps=old,
            completion_start=0 if args.score_prompt else args.prompt,
        )

    def __call__(self) -> float:
        self.state, metrics = self.step(self.state, self.batch)
        return float(metrics.loss)  # a host fetch: the step has really finished


def _packed(args, cfg: TrainConfig, batch) -> TrainBatch:
    """The same responses packed into rows of ``args.seq`` tokens, with the same old log-probs per token."""
    tokens, attn, _, adv, old = batch
    p, lengths = args.prompt, np.asarray(args.lengths)
    packed = pack_train_batch(
        tokens[:, :p],
        attn[:, :p],
        tokens[:, p:],
        attn[:, p:],
        adv,
        mini_batch_size=args.batch,
        max_tokens_per_row=args.seq,
        rows_per_micro=cfg.rows_per_micro(1),
        pad_id=0,
    )
    _, placement = place_sequences(p + lengths, args.batch, args.seq, cfg.rows_per_micro(1))
    packed_old = np.zeros(packed.tokens.shape, np.float32)
    for i, (row, at, _) in enumerate(placement):
        packed_old[row, at : at + p + lengths[i]] = old[i, : p + lengths[i]]
    print(f"packed {args.batch} sequences into {packed.tokens.shape[0]} rows of {args.seq} tokens")
    return jax.tree.map(jnp.asarray, packed.replace(old_logps=packed_old))


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--mlp", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=64, help="leading prompt tokens (not in the loss)")
    ap.add_argument(
        "--chunk",
        type=int,
        default=PRODUCT_CHUNK,
        help=f"justrl_jax logp_chunk_size (default: the product's TrainConfig default, {PRODUCT_CHUNK})",
    )
    ap.add_argument(
        "--remat",
        action="store_true",
        help="per-layer rematerialisation on both sides (JustRL's gradient checkpointing; the peer through "
        "transformers' activation checkpointing)",
    )
    ap.add_argument(
        "--score-prompt",
        action="store_true",
        help="JAX side: unembed every position, as PyTorch does (default: skip the prompt)",
    )
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--lengths", type=str, default="", help="comma-separated response lengths, one per row")
    ap.add_argument("--no-peer", action="store_true", help="skip PyTorch (e.g. to measure justrl_jax's memory)")
    ap.add_argument("--attention", default="auto", help="justrl_jax model.attention")
    ap.add_argument("--pack", action="store_true", help="justrl_jax: pack the rows (train.max_tokens_per_row)")
    ap.add_argument("--micro-tokens", type=int, default=None, help="justrl_jax train.micro_batch_tokens")
    bench_models.add_model_args(ap)
    args = ap.parse_args()
    bench_models.apply_preset(args)
    if args.lengths:
        args.lengths = [int(x) for x in args.lengths.split(",")]
        if len(args.lengths) != args.batch:
            ap.error(f"--lengths gives {len(args.lengths)} rows but --batch is {args.batch}")
        args.seq = args.prompt + max(args.lengths)
    else:
        args.lengths = [args.seq - args.prompt] * args.batch
    if min(args.lengths) < 1:
        ap.error("every response needs at least one token (--seq > --prompt, --lengths >= 1)")

    batch = _batch(args, np.random.default_rng(0))
    optim, loss = OptimConfig(lr=1e-6, warmup_steps=0), LossConfig()
    tokens_per_step = args.batch * args.prompt + sum(args.lengths)
    print(
        f"jax {jax.devices()[0].platform} x{jax.device_count()}, torch {torch.get_num_threads()} threads; "
        f"{args.batch} rows of {args.prompt} + {min(args.lengths)}..{max(args.lengths)} tokens "
        f"({tokens_per_step} in all); vocab {args.vocab}, hidden {args.hidden}, "
        f"{args.layers} layers, {args.heads}/{args.kv_heads} heads, mlp {args.mlp}; {args.dtype} "
        f"(master weights fp32); peer on {'none' if args.no_peer else bench_models.torch_device()}"
    )
    print(f"baseline_rss_gib={_rss_gib():.3f}  (peak resident memory before any model is built)")

    hf = None if args.no_peer else bench_models.hf_model(args, args.seq)
    variants = {"justrl_jax GRPO": JaxStep(args, hf, optim, loss, batch)}
    print(f"pre_step_rss_gib={_rss_gib():.3f}  (peak resident memory with the JAX state built, before its first step)")
    if not args.no_peer:
        variants["pytorch GRPO"] = TorchStep(args, hf, optim, loss, batch, grpo=True)
        variants["pytorch plain CE"] = TorchStep(args, bench_models.hf_model(args, args.seq), optim, loss, batch, False)
    for name, fn in variants.items():  # first call: compile (JAX) / warm-up; the losses must agree
        t0 = time.perf_counter()
        first = fn()
        print(f"{name:17s} first call {time.perf_counter() - t0:6.2f} s, first loss {first:.6f}")
    times = {name: [] for name in variants}
    for _ in range(args.iters):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, t in med.items():
        print(f"{name:17s} {t:.3f} s/step (min {min(times[name]):.3f})  {tokens_per_step / t:8,.0f} tokens/s")
    chunk_note = " (product default)" if args.chunk == PRODUCT_CHUNK else ""
    print(
        f"(justrl_jax: logp chunk {args.chunk}{chunk_note}, remat {args.remat}, attention {args.attention}, "
        f"packed {args.pack}, prompt logits {'computed' if args.score_prompt else 'skipped'})"
    )
    if hf is not None:
        print(
            f"(pytorch: transformers attention {hf.config._attn_implementation}, "
            f"gradient checkpointing {args.remat}, logits of every position)"
        )
    print(f"step_s={med['justrl_jax GRPO']:.3f}  tokens_per_s={tokens_per_step / med['justrl_jax GRPO']:.0f}")
    scored = sum(args.lengths) if not args.score_prompt else tokens_per_step
    config = bench_models.model_config(args, args.seq)
    flops = bench_models.train_flops(config, [args.prompt + n for n in args.lengths], scored)
    print(bench_models.mfu_line(flops, med["justrl_jax GRPO"], args.dtype))
    if not args.no_peer:
        print(f"ratio {med['justrl_jax GRPO'] / med['pytorch GRPO']:.3f}  (justrl_jax / pytorch, same GRPO loss)")


if __name__ == "__main__":
    main()
