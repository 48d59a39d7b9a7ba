"""The train step against a PyTorch/transformers reference; its invariances (micro-batching, remat, mesh)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from flax import nnx
from hf_reference import make_hf_qwen2

from justrl_jax.advantages import group_advantages
from justrl_jax.losses import LossConfig
from justrl_jax.model.hf_io import export_params, load_hf_model
from justrl_jax.model.qwen2 import Qwen2, Qwen2Config, positions_from_mask
from justrl_jax.optim import OptimConfig
from justrl_jax.sharding import make_mesh
from justrl_jax.train_step import (
    TrainBatch,
    TrainConfig,
    init_train_state,
    make_compute_logps,
    make_train_step,
    state_sharding,
)

N, P, T, G = 8, 5, 7, 4  # responses, prompt slots, completion slots, group size
LO, HI, C = 0.2, 0.28, 10.0
# Adam's eps is raised from 1e-8 so that near-zero gradients do not turn rounding noise into full-size
# steps (g / (|g| + eps) ~ sign(g)): then equal parameters after the step really mean equal gradients.
BASE = TrainConfig(
    mini_batch_size=4,
    micro_batch_size=4,
    logp_chunk_size=5,
    remat=False,
    optim=OptimConfig(lr=1e-3, warmup_steps=0, eps=1e-4),
)


def _numpy_batch(vocab, seed=0):
    """Left-padded prompts + right-padded completions, as the sampler lays them out."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, (N, P + T)).astype(np.int32)
    prompt_len = rng.integers(2, P + 1, N)
    completion_len = rng.integers(2, T + 1, N)
    attn = np.zeros((N, P + T), bool)
    loss = np.zeros((N, P + T), np.float32)
    for i in range(N):
        attn[i, P - prompt_len[i] : P + completion_len[i]] = True
        loss[i, P : P + completion_len[i]] = 1.0
    tokens[~attn] = 0
    rewards = np.array([1, -1, -1, 1, 1, 1, 1, 1], np.float32)  # group 2 is all-equal: advantage 0
    return tokens, attn, loss, np.asarray(group_advantages(rewards, G))


def _batch(tokens, attn, loss, adv, old=None):
    return TrainBatch(
        tokens=tokens,
        positions=np.asarray(positions_from_mask(jnp.asarray(attn))),
        attn_mask=attn,
        loss_mask=loss,
        advantages=adv,
        old_logps=old,
    )


def _torch_logps(model, tokens, attn):
    """log p(tokens[:, s] | tokens[:, :s]) at s >= 1 from transformers (fp32), aligned to the token."""
    t = torch.as_tensor(tokens, dtype=torch.long)
    m = torch.as_tensor(attn).long()
    pos = (m.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=t, attention_mask=m, position_ids=pos).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1)
    lp = logp.gather(-1, t[:, 1:, None])[..., 0]
    ent = -(logp.exp() * logp).sum(-1)
    zero = torch.zeros_like(lp[:, :1])
    return torch.cat([zero, lp], 1), torch.cat([zero, ent], 1)


def _torch_grpo_step(model, tokens, attn, loss_mask, adv, old, cfg: TrainConfig):
    """verl 0.4.0's update written from recipe §1/§2: token-mean clipped loss per mini-batch, backward,
    clip_grad_norm_, torch AdamW step. Returns the mini-batch losses and gradient norms."""
    o = cfg.optim
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay)
    losses, norms = [], []
    mb = cfg.mini_batch_size
    for start in range(0, N, mb):
        rows = slice(start, start + mb)
        opt.zero_grad()
        logp, _ = _torch_logps(model, tokens[rows], attn[rows])
        a = torch.tensor(adv[rows])[:, None]
        mask = torch.tensor(loss_mask[rows])
        ratio = torch.exp(logp - torch.tensor(old[rows]))
        l1 = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1 - LO, 1 + HI))
        token_loss = torch.where(a < 0, torch.minimum(l1, -a * C), l1)
        loss = (token_loss * mask).sum() / mask.sum()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=o.grad_clip)))
        opt.step()
        losses.append(loss.item())
    return losses, norms


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    # vocab 96 and MLP 96 divide the 4-way tensor axis, so the mesh test really shards them.
    return make_hf_qwen2(
        tmp_path_factory.mktemp("hf"), vocab=96, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=96
    )


@pytest.fixture(scope="module")
def reference(hf):
    """One rollout step (two mini-batches) with the base config; the other tests compare to it."""
    path, _ = hf
    model = load_hf_model(str(path))
    tokens, attn, loss, adv = _numpy_batch(model.config.vocab_size)
    graphdef, state = init_train_state(model, BASE.optim)
    logp_result = make_compute_logps(graphdef, BASE, None)(state, _batch(tokens, attn, loss, adv))
    # Old log-probs off the current ones, so that every clip branch is active in the update.
    rng = np.random.default_rng(1)
    old = np.asarray(logp_result.logps) + rng.normal(0, 0.3, (N, P + T)).astype(np.float32)
    old[adv < 0, P] -= 3.0  # ratio ~20 on negative advantages: the dual clip
    old[adv < 0, P + 1] += 1.0  # ratio ~0.37: the lower clip
    old[adv > 0, P] -= 1.0  # ratio ~2.7 on positive advantages: the upper clip
    batch = _batch(tokens, attn, loss, adv, old.astype(np.float32))
    step = make_train_step(graphdef, BASE, None)
    new_state, metrics = step(state, batch)
    return dict(
        model=model, batch=batch, logps=logp_result, state=new_state, metrics=metrics, step=step, graphdef=graphdef
    )


def _hf_params(state, config):
    return export_params(state.params, config, "float32")


def test_compute_logps_match_transformers(hf, reference):
    _, torch_model = hf
    b = reference["batch"]
    with torch.no_grad():
        want, want_ent = _torch_logps(torch_model, b.tokens, b.attn_mask)
    got = np.asarray(reference["logps"].logps)
    valid = b.attn_mask.copy()
    valid[:, 1:] &= b.attn_mask[:, :-1]  # a token predicted from a real previous token
    valid[:, 0] = False
    np.testing.assert_allclose(got[valid], want.numpy()[valid], atol=2e-5)
    mask = b.loss_mask > 0
    np.testing.assert_allclose(float(reference["logps"].entropy), want_ent.numpy()[mask].mean(), rtol=1e-5)
    assert float(reference["logps"].tokens) == mask.sum()


def test_train_step_matches_torch_grpo_adamw(hf, reference):
    path, _ = hf
    import transformers

    torch_model = transformers.Qwen2ForCausalLM.from_pretrained(path).float()
    b = reference["batch"]
    losses, norms = _torch_grpo_step(torch_model, b.tokens, b.attn_mask, b.loss_mask, b.advantages, b.old_logps, BASE)
    m = reference["metrics"]
    np.testing.assert_allclose(float(m.loss), np.mean(losses), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(m.grad_norm), np.mean(norms), rtol=1e-5)
    assert max(norms) > BASE.optim.grad_clip  # clipping is exercised
    assert float(m.clipfrac_high) > 0 and float(m.clipfrac_low) > 0 and float(m.clipfrac_dual) > 0
    ours = _hf_params(reference["state"], reference["model"].config)
    theirs = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    start = _hf_params_from_model(reference["model"])
    for name, value in ours.items():
        np.testing.assert_allclose(value, theirs[name], atol=2e-6, rtol=0, err_msg=name)
    moved = max(np.abs(ours[k] - start[k]).max() for k in ours)
    assert moved > 5e-4  # two AdamW steps at lr 1e-3 really moved the weights
    assert int(reference["state"].step) == 1 and int(m.updates) == 2 and int(m.skipped_updates) == 0
    assert float(m.response_tokens) == b.loss_mask.sum() and float(m.total_tokens) == b.attn_mask.sum()


def _hf_params_from_model(model):
    return export_params(nnx.state(model, nnx.Param), model.config, "float32")


def _run(reference, cfg, mesh=None):
    graphdef, state = init_train_state(reference["model"], cfg.optim, mesh)
    sharding = state_sharding(state) if mesh is not None else None
    new_state, metrics = make_train_step(graphdef, cfg, mesh, sharding)(state, reference["batch"])
    return new_state, metrics


def _assert_same_update(reference, state, metrics):
    cfg = reference["model"].config
    ref = _hf_params(reference["state"], cfg)
    for name, value in _hf_params(state, cfg).items():
        np.testing.assert_allclose(value, ref[name], atol=2e-6, rtol=0, err_msg=name)
    for field in ("loss", "grad_norm", "entropy", "approx_kl", "clipfrac_low", "ratio_max"):
        want = float(getattr(reference["metrics"], field))
        np.testing.assert_allclose(float(getattr(metrics, field)), want, rtol=1e-5, atol=1e-7, err_msg=field)


@pytest.mark.slow
@pytest.mark.parametrize(
    "change,micro",
    [
        (dict(micro_batch_size=4, micro_batch_tokens=2 * (P + T)), 2),  # a token budget of two sequences
        (dict(remat=True), 4),
    ],
    ids=["micro-batched", "remat"],
)
def test_micro_batching_and_remat_do_not_change_the_update(reference, change, micro):
    cfg = dataclasses.replace(BASE, **change)
    assert cfg.micro_batch_for(4, P + T, 1) == micro
    _assert_same_update(reference, *_run(reference, cfg))


@pytest.mark.slow
def test_skipping_the_prompt_does_not_change_the_update(reference):
    """completion_start = P skips the prompt's unembedding; nothing trained on changes."""
    batch = reference["batch"].replace(completion_start=P)
    graphdef, state = init_train_state(reference["model"], BASE.optim)
    logps = make_compute_logps(graphdef, BASE, None)(state, batch)
    want = np.asarray(reference["logps"].logps)
    np.testing.assert_allclose(np.asarray(logps.logps)[:, P:], want[:, P:], atol=1e-6)
    assert np.all(np.asarray(logps.logps)[:, :P] == 0.0)
    np.testing.assert_allclose(float(logps.entropy), float(reference["logps"].entropy), rtol=1e-6)
    _assert_same_update(reference, *reference["step"](state, batch))


@pytest.mark.slow
def test_4x4_mesh_equals_one_device(reference):
    mesh = make_mesh("4x4")
    graphdef, state = init_train_state(reference["model"], BASE.optim, mesh)
    # Parameters and Adam moments are really sharded.
    q = state.params["layers"][0]["attn"]["q_kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    mu = state.opt_state.inner_state[1][0].mu["layers"][0]["attn"]["q_kernel"]
    assert mu.sharding == q.sharding
    sharding = state_sharding(state)
    logps = make_compute_logps(graphdef, BASE, mesh, sharding)(state, reference["batch"])
    np.testing.assert_allclose(np.asarray(logps.logps), np.asarray(reference["logps"].logps), atol=2e-6)
    new_state, metrics = make_train_step(graphdef, BASE, mesh, sharding)(state, reference["batch"])
    assert new_state.params["lm_head"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    _assert_same_update(reference, new_state, metrics)


def test_non_finite_update_is_skipped(reference):
    b = reference["batch"]
    adv = b.advantages.copy()
    adv[:4] = np.nan  # mini-batch 0 gets a NaN loss; mini-batch 1 is fine
    for bad, skipped in ((adv, 1), (np.full_like(adv, np.nan), 2)):
        graphdef, state = init_train_state(reference["model"], BASE.optim)
        before = jax.tree.map(np.asarray, state)
        new_state, metrics = reference["step"](state, b.replace(advantages=bad))
        assert int(metrics.skipped_updates) == skipped and int(new_state.skipped_updates) == skipped
        assert int(metrics.updates) == 2 - skipped and int(new_state.step) == 1
        after = jax.tree.map(np.asarray, new_state)
        params_same = all(
            np.array_equal(x, y)
            for x, y in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params), strict=True)
        )
        assert params_same == (skipped == 2)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(after.params))
        if skipped == 2:  # nothing moved, Adam's moments and step count included (only the lr was set)
            for x, y in zip(
                jax.tree.leaves(before.opt_state.inner_state), jax.tree.leaves(after.opt_state.inner_state), strict=True
            ):
                np.testing.assert_array_equal(x, y)


def test_train_state_round_trips_through_orbax(reference, tmp_path):
    state = reference["state"]
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "state", state)
        ckpt.wait_until_finished()
        restored = ckpt.restore(tmp_path / "state", jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert jax.tree.structure(restored) == jax.tree.structure(state)


@pytest.mark.slow
def test_learning_raises_a_synthetic_reward():
    """GRPO on a tiny model: reward = fraction of completion tokens equal to TARGET. It must go up."""
    vocab, target, prompts, group, p_len, c_len = 16, 7, 4, 8, 3, 4
    n = prompts * group
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16
    )
    model = Qwen2(config, rngs=nnx.Rngs(0))
    cfg = TrainConfig(
        mini_batch_size=16,
        micro_batch_size=16,
        logp_chunk_size=8,
        remat=False,
        optim=OptimConfig(lr=2e-2, warmup_steps=0),
    )
    graphdef, state = init_train_state(model, cfg.optim)
    step = make_train_step(graphdef, cfg, None)
    compute_logps = make_compute_logps(graphdef, cfg, None)

    @jax.jit
    def next_token_logits(params, tokens, mask, t):
        m = nnx.merge(graphdef, params, copy=True)
        hidden, _ = m(tokens, positions_from_mask(mask), mask)
        return m.logits(hidden)[:, p_len + t - 1]

    rng = np.random.default_rng(0)
    key = jax.random.key(0)
    loss_mask = np.zeros((n, p_len + c_len), np.float32)
    loss_mask[:, p_len:] = 1
    rewards_seen = []
    for _ in range(7):
        prompt = np.repeat(rng.integers(0, vocab, (prompts, p_len)), group, axis=0)
        tokens = np.concatenate([prompt, np.zeros((n, c_len), np.int64)], 1).astype(np.int32)
        mask = np.zeros_like(tokens, bool)
        mask[:, :p_len] = True
        for t in range(c_len):
            key, sub = jax.random.split(key)
            logits = next_token_logits(state.params, tokens, mask, t)
            tokens[:, p_len + t] = np.asarray(jax.random.categorical(sub, logits))
            mask[:, p_len + t] = True
        rewards = (tokens[:, p_len:] == target).mean(1).astype(np.float32)
        rewards_seen.append(rewards.mean())
        batch = _batch(tokens, mask, loss_mask, np.asarray(group_advantages(rewards, group)))
        batch = batch.replace(old_logps=compute_logps(state, batch).logps)
        state, metrics = step(state, batch)
        assert np.isfinite(float(metrics.loss))
    assert rewards_seen[0] < 0.2  # starts near chance (1/16)
    assert np.mean(rewards_seen[-2:]) > rewards_seen[0] + 0.3, rewards_seen


def test_bad_batches_and_configs_are_named():
    with pytest.raises(ValueError, match="train.micro_batch_size"):
        TrainConfig(mini_batch_size=8, micro_batch_size=3)
    with pytest.raises(ValueError, match="train.logp_chunk_size"):
        TrainConfig(logp_chunk_size=0)
    with pytest.raises(ValueError, match="train.loss"):
        TrainConfig(loss="token-mean")
    with pytest.raises(ValueError, match="data-parallel"):
        TrainConfig(mini_batch_size=6, micro_batch_size=6).micro_batch_for(6, 10, 4)
    cfg = TrainConfig(mini_batch_size=512, micro_batch_size=64, micro_batch_tokens=32768, loss=LossConfig())
    assert cfg.micro_batch_for(512, 16384, 1) == 2  # 32768 tokens per device: 2 sequences of 16k
    assert cfg.micro_batch_for(512, 16384, 32) == 64  # 2 per device on 32 devices = 64 = micro_batch_size
    assert cfg.micro_batch_for(512, 32768, 32) == 32 and cfg.micro_batch_for(512, 65536, 32) == 32
    model = Qwen2(
        Qwen2Config(
            vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8
        ),
        rngs=nnx.Rngs(0),
    )
    graphdef, state = init_train_state(model, BASE.optim)
    step = make_train_step(graphdef, BASE, None)
    x = np.zeros((4, 3), np.int32)
    good = TrainBatch(x, x, x > -1, x.astype(np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="old_logps"):
        step(state, good)
    with pytest.raises(ValueError, match="batch.advantages"):
        step(state, good.replace(advantages=np.zeros(3, np.float32), old_logps=x.astype(np.float32)))
    with pytest.raises(ValueError, match="mini_batch_size"):
        step(state, TrainBatch(x[:2], x[:2], x[:2] > -1, x[:2] * 0.0, np.zeros(2), old_logps=x[:2] * 0.0))
