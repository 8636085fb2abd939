"""Multi-token-prediction heads: shapes, target selection, the heads=0 no-op, and a toy overfit."""

import torch
import torch.nn.functional as F

from smolforge.models.architecture import build_model
from smolforge.models.config import ModelConfig, MTPConfig
from smolforge.models.masking import packed_attention_inputs
from smolforge.models.mtp import MTPHeads, mtp_loss, mtp_losses, mtp_target_counts

VOCAB = 61
IDS = {"bos_id": 0, "eos_id": 1, "pad_id": 2}


def model_and_heads(k: int):
    cfg = ModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64, max_seq_len=64)
    model = build_model(cfg, vocab_size=VOCAB, seed=0, **IDS)
    return model, MTPHeads(model.config, MTPConfig(heads=k))


def test_shapes_offsets_and_own_weights_only():
    model, heads = model_and_heads(3)
    assert heads.offsets == [2, 3, 4] and len(heads) == 3
    h = torch.randn(2, 10, 32)
    logits = heads(h, model.get_output_embeddings())
    assert [tuple(x.shape) for x in logits] == [(2, 10, VOCAB)] * 3
    # Checkpoints keep the heads apart from the model: no copy of the shared embedding.
    assert all(k.startswith("heads.") for k in heads.state_dict())
    assert sum(p.numel() for p in heads.parameters()) == 3 * (32 * 32 + 32)


def test_loss_matches_a_direct_computation_and_skips_cross_document_targets():
    model, heads = model_and_heads(2)
    torch.manual_seed(0)
    h = torch.randn(1, 8, 32)
    labels = torch.randint(5, VOCAB, (1, 8))
    labels[0, 6] = -100
    doc = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]])
    lm_head = model.get_output_embeddings()
    got = mtp_losses(heads, h, labels, lm_head=lm_head, doc_ids=doc)

    def expected(head_index, offset):
        pairs = [
            (t, t + offset)
            for t in range(8 - offset)
            if labels[0, t + offset] != -100 and doc[0, t] == doc[0, t + offset]
        ]
        logits = lm_head(heads.heads[head_index](h[0, [t for t, _ in pairs]]))
        return F.cross_entropy(logits, labels[0, [u for _, u in pairs]])

    assert set(got) == {2, 3}
    assert torch.allclose(got[2], expected(0, 2)) and torch.allclose(got[3], expected(1, 3))
    total = mtp_loss(heads, h, labels, lm_head=lm_head, doc_ids=doc)
    assert torch.allclose(total, (got[2] + got[3]) / 2)
    # A head whose every target crosses a boundary or the end is left out, not NaN.
    short = mtp_losses(heads, h[:, :3], labels[:, :3], lm_head=lm_head)
    assert set(short) == {2}


def test_zero_heads_is_a_no_op():
    model, heads = model_and_heads(0)
    ids = torch.randint(5, VOCAB, (2, 12))
    out = model(ids, labels=ids, output_hidden_states=True)
    extra = mtp_loss(heads, out.hidden_states[-1], ids, lm_head=model.get_output_embeddings())
    assert extra.item() == 0.0 and not extra.requires_grad
    (out.loss + heads.weight * extra).backward()
    with_extra = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(with_extra, model.parameters(), strict=True))
    assert list(heads.parameters()) == []


def test_toy_overfit_lowers_the_mtp_loss():
    torch.manual_seed(0)
    model, heads = model_and_heads(2)
    # One fixed packed batch: the heads must learn tokens 2 and 3 ahead within each document.
    ids = torch.randint(5, VOCAB, (2, 32))
    doc = torch.tensor([[0] * 20 + [1] * 12, [0] * 32])
    inputs = packed_attention_inputs(doc)
    opt = torch.optim.AdamW([*model.parameters(), *heads.parameters()], lr=1e-2)
    losses = []
    for _ in range(25):
        out = model(ids, labels=ids, output_hidden_states=True, **inputs)
        extra = mtp_loss(heads, out.hidden_states[-1], ids, lm_head=model.get_output_embeddings(), doc_ids=doc)
        (out.loss + heads.weight * extra).backward()
        opt.step()
        opt.zero_grad()
        losses.append(extra.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_parts_of_a_step_add_up_to_the_loss_of_the_whole_step():
    """Split into row groups (micro-batches or processes) with the step's denominators, the MTP
    losses of the parts sum exactly to the loss of the whole batch."""
    model, heads = model_and_heads(2)
    lm_head = model.get_output_embeddings()
    torch.manual_seed(0)
    h, labels = torch.randn(4, 12, 32), torch.randint(5, VOCAB, (4, 12))
    labels[0, :5] = -100
    doc = torch.tensor([[0] * 12, [0] * 3 + [1] * 9, [0] * 6 + [1] * 6, [0] * 11 + [1]])
    whole = mtp_loss(heads, h, labels, lm_head=lm_head, doc_ids=doc)
    counts = mtp_target_counts(heads, labels, doc)
    parts = sum(
        mtp_loss(heads, h[rows], labels[rows], lm_head=lm_head, doc_ids=doc[rows], denominators=counts)
        for rows in (slice(0, 1), slice(1, 4))
    )
    torch.testing.assert_close(parts, whole)
