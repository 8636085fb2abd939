"""Optimizer construction (AdamW, Muon + AdamW under one scheduler) and QK-clip."""

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from smolforge.models.architecture import build_model
from smolforge.models.config import ModelConfig, MTPConfig, OptimizerConfig
from smolforge.models.masking import document_mask, packed_attention_inputs
from smolforge.models.mtp import MTPHeads
from smolforge.models.optim import (
    AttentionLogitTracker,
    CombinedOptimizer,
    build_optimizer,
    measure_max_logits,
    parameter_roles,
    qk_clip,
)

VOCAB = 61
IDS = {"bos_id": 0, "eos_id": 1, "pad_id": 2}


def make_model(layers: int = 4, attn: str = "sdpa"):
    cfg = ModelConfig(
        hidden_size=64, num_layers=layers, num_heads=4, num_kv_heads=2, intermediate_size=96, max_seq_len=64
    )
    return build_model(cfg, vocab_size=VOCAB, seed=0, attn_implementation=attn, **IDS)


def params_of(opt):
    return [p for g in opt.param_groups for p in g["params"]]


def test_roles_cover_every_parameter_once():
    model = make_model()
    heads = MTPHeads(model.config, MTPConfig(heads=2))
    roles = parameter_roles(model, [heads])
    everything = {id(p) for p in [*model.parameters(), *heads.parameters()]}
    listed = [id(p) for ps in roles.values() for p in ps]
    assert sorted(listed) == sorted(everything)  # the tied embedding counted once
    assert [p for p in roles["embedding"]] == [model.model.embed_tokens.weight]
    assert all(p.ndim == 1 for p in roles["vector"])
    assert any(p is heads.heads[0].proj.weight for p in roles["matrix"])


def test_adamw_decays_matrices_only():
    model = make_model()
    opt = build_optimizer(model, OptimizerConfig(lr=1e-3))
    assert isinstance(opt, torch.optim.AdamW)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in groups["decay"]["params"])
    assert any(p is model.model.embed_tokens.weight for p in groups["no_decay"]["params"])
    assert groups["decay"]["betas"] == (0.9, 0.95) and groups["decay"]["lr"] == 1e-3
    assert len(params_of(opt)) == len(list(model.parameters()))


def test_muon_takes_hidden_matrices_and_one_scheduler_drives_both(tmp_path):
    model = make_model()
    heads = MTPHeads(model.config, MTPConfig(heads=1))
    cfg = OptimizerConfig(name="muon", lr=1e-3, muon_lr=0.02)
    opt = build_optimizer(model, cfg, extra_modules=[heads])
    assert isinstance(opt, CombinedOptimizer) and isinstance(opt, torch.optim.Optimizer)
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert all(p.ndim == 2 for p in params_of(muon))
    assert any(p is heads.heads[0].proj.weight for p in params_of(muon))
    assert not any(p is model.model.embed_tokens.weight for p in params_of(muon))
    assert any(p is model.model.embed_tokens.weight for p in params_of(adamw))
    assert len(params_of(opt)) == len(list(model.parameters())) + len(list(heads.parameters()))

    sched = LambdaLR(opt, lambda step: 0.5 ** step)
    ids = torch.randint(5, VOCAB, (2, 16))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if "norm" not in n)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["muon"] == pytest.approx(0.005) and lrs["adamw_no_decay"] == pytest.approx(2.5e-4)
    # The inner optimizers step with the scheduled rates (their groups are the same dicts).
    assert muon.param_groups[0]["lr"] == pytest.approx(0.005)
    assert len(opt.state) == len(list(model.parameters()))  # the unused MTP head got no gradient, no state

    # Checkpoint round trip: a fresh optimizer + scheduler resume where they stopped.
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    torch.save({"opt": saved_opt, "sched": saved_sched}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    opt2 = build_optimizer(model, cfg, extra_modules=[heads])
    sched2 = LambdaLR(opt2, lambda step: 0.5 ** step)
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    p = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(opt2.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])
    sched.step()
    sched2.step()
    assert [g["lr"] for g in opt2.optimizers[0].param_groups] == [g["lr"] for g in opt.optimizers[0].param_groups]
    with pytest.raises(ValueError, match="expected 2"):
        opt2.load_state_dict({"optimizers": [saved_opt["optimizers"][0]]})


# ---------------------------------------------------------------------------------------------
# QK-clip


def reference_max_logits(model, ids, doc):
    """Max logits recomputed independently: per head, from the layer's input, with an explicit loop."""
    mask = document_mask(doc)
    inputs = {}
    hooks = [
        layer.self_attn.register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: inputs.update({i: (kwargs["hidden_states"], kwargs["position_embeddings"])}),
            with_kwargs=True,
        )
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        model(ids, **packed_attention_inputs(doc, model.config._attn_implementation))
    for h in hooks:
        h.remove()
    out = {}
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        h, (cos, sin) = inputs[i]
        b, t, _ = h.shape
        q = attn.q_proj(h).view(b, t, -1, attn.head_dim)
        k = attn.k_proj(h).view(b, t, -1, attn.head_dim)
        if attn.use_rope:
            def rot(x, cos=cos, sin=sin):
                x1, x2 = x.chunk(2, dim=-1)
                return x * cos[:, :, None] + torch.cat((-x2, x1), dim=-1) * sin[:, :, None]
            q, k = rot(q), rot(k)
        per_head = []
        for head in range(q.shape[2]):
            kv = head // attn.num_key_value_groups
            scores = torch.einsum("bqd,bkd->bqk", q[:, :, head], k[:, :, kv]) / attn.head_dim**0.5
            per_head.append(scores.masked_fill(~mask[:, 0], float("-inf")).max())
        out[i] = torch.stack(per_head)
    return out


def docs_for(ids):
    t = ids.shape[1]
    return torch.tensor([[0] * (t // 2) + [1] * (t - t // 2)] * ids.shape[0])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_tracker_measures_the_masked_per_head_max(attn):
    model = make_model(attn=attn).eval()
    ids = torch.randint(5, VOCAB, (2, 20))
    doc = docs_for(ids)
    inputs = packed_attention_inputs(doc, attn)
    got = measure_max_logits(model, ids, attention_mask=inputs["attention_mask"], position_ids=inputs["position_ids"])
    ref = reference_max_logits(model, ids, doc)
    assert sorted(got) == [0, 1, 2, 3]
    for layer in got:
        assert torch.allclose(got[layer], ref[layer], atol=1e-5), layer
    # No mask at all (sdpa is told is_causal; eager gets transformers' causal mask): one document.
    plain = measure_max_logits(model, ids)
    ref = reference_max_logits(model, ids, torch.zeros_like(doc))
    for layer in plain:
        assert torch.allclose(plain[layer], ref[layer], atol=1e-5), layer


def inflate(model, layer: int, head: int, factor: float):
    attn = model.model.layers[layer].self_attn
    with torch.no_grad():
        attn.q_proj.weight[head * attn.head_dim : (head + 1) * attn.head_dim] *= factor


def test_clip_brings_the_head_under_the_threshold_and_spares_its_group_mate():
    model = make_model().eval()
    ids = torch.randint(5, VOCAB, (2, 24))
    inflate(model, layer=3, head=0, factor=40.0)  # the last layer: its inputs do not change when clipping
    before = measure_max_logits(model, ids)
    others = max(float(v.max()) for i, v in before.items() if i != 3)
    others = max(others, float(before[3][1:].max()))
    assert before[3][0] > others
    threshold = (float(before[3][0]) + others) / 2

    result = qk_clip(model, before, threshold)
    assert result.clipped_heads == {3: [0]}
    after = measure_max_logits(model, ids)
    assert after[3][0] <= threshold * (1 + 1e-5)
    assert after[3][0] == pytest.approx(threshold, rel=1e-4)  # scaled to the threshold, not below it
    # Head 1 shares head 0's key/value head; its logits are untouched, as are other layers'.
    assert torch.allclose(after[3][1:], before[3][1:], rtol=1e-5)
    for i in range(3):
        assert torch.equal(after[i], before[i])
    metrics = result.metrics()
    assert metrics["qk/clipped_heads"] == 1 and metrics["qk/max_logit"] == pytest.approx(float(before[3][0]))


def test_clip_many_heads_of_a_one_layer_model():
    model = make_model(layers=1).eval()
    for head, factor in [(0, 20.0), (2, 30.0), (3, 10.0)]:
        inflate(model, 0, head, factor)
    ids = torch.randint(5, VOCAB, (3, 24))
    before = measure_max_logits(model, ids)[0]
    threshold = float(before.median())
    result = qk_clip(model, {0: before}, threshold)
    after = measure_max_logits(model, ids)[0]
    over = before > threshold
    assert result.clipped_heads[0] == over.nonzero().flatten().tolist()
    assert (after <= threshold * (1 + 1e-5)).all()
    assert torch.allclose(after[~over], before[~over], rtol=1e-5)


def test_nothing_changes_below_the_threshold():
    model = make_model()
    ids = torch.randint(5, VOCAB, (2, 16))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    maxima = measure_max_logits(model, ids)
    result = qk_clip(model, maxima, threshold=float(max(v.max() for v in maxima.values())) + 1.0)
    assert result.clipped_heads == {}
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError):
        qk_clip(model, maxima, threshold=0.0)


def test_tracker_in_a_training_step_with_muon():
    model = make_model()
    opt = build_optimizer(model, OptimizerConfig(name="muon", qk_clip=5.0))
    ids = torch.randint(5, VOCAB, (2, 16))
    with AttentionLogitTracker(model) as tracker:
        for _ in range(2):
            tracker.reset()
            model(ids, labels=ids, use_cache=False).loss.backward()
            opt.step()
            opt.zero_grad()
            result = qk_clip(model, tracker.max_logits(), 5.0)
            assert set(result.max_logits) == {0, 1, 2, 3}
        tracker.enabled = False
        tracker.reset()
        model(ids)
        assert tracker.max_logits() == {}
    # Removed on exit: no hooks left on the model.
    assert all(not m._forward_hooks for m in model.modules())
