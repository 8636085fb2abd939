"""Optimizers: AdamW as SmolLM3 trained, Muon for hidden matrices, and QK-clip (Kimi K2's MuonClip).

Parameter roles decide the treatment, whatever the optimizer:

    matrix     2-D weights inside the network (attention and MLP projections, MTP projections).
               AdamW with weight decay, or Muon.
    embedding  the token embedding table and the output head (one tensor when tied). AdamW, no
               weight decay: decaying rows of rare tokens toward zero only erases what little they
               learned, and Muon's orthogonalised update suits hidden maps, not lookup tables or
               the classifier (Muon's authors and Moonlight keep AdamW there).
    vector     RMSNorm gains and biases. AdamW, no weight decay: a norm gain pulled toward 0 fights
               the normalisation it exists for.

Every parameter group keeps its own peak `lr`; a torch LR scheduler records it as `initial_lr` and
multiplies it by the schedule, so one schedule drives Muon (peak 0.02) and AdamW (peak ~3e-4)
together. For Muon, `build_optimizer` returns a `CombinedOptimizer`: a real `torch.optim.Optimizer`
whose `param_groups` are the very group dicts of its two inner optimizers, which is what lets a
standard scheduler (which requires an Optimizer and writes `group["lr"]`) drive both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.models.smollm3.modeling_smollm3 import apply_rotary_pos_emb

from smolforge.models.config import OptimizerConfig

# ---------------------------------------------------------------------------------------------
# Parameter roles and optimizers


def parameter_roles(model: nn.Module, extra_modules: Iterable[nn.Module] = ()) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters of the model (and e.g. MTP heads) by role: matrix, embedding, vector.

    Each tensor appears once even when shared (tied embeddings, heads reusing the output layer).
    """
    modules = [model, *extra_modules]
    embedding_ids: set[int] = set()
    for mod in modules:
        for sub in mod.modules():
            if isinstance(sub, nn.Embedding):
                embedding_ids.add(id(sub.weight))
        get_out = getattr(mod, "get_output_embeddings", None)
        out = get_out() if callable(get_out) else None
        if out is not None and getattr(out, "weight", None) is not None:
            embedding_ids.add(id(out.weight))

    roles: dict[str, list[nn.Parameter]] = {"matrix": [], "embedding": [], "vector": []}
    seen: set[int] = set()
    for mod in modules:
        for p in mod.parameters():
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            if id(p) in embedding_ids:
                roles["embedding"].append(p)
            elif p.ndim >= 2:
                roles["matrix"].append(p)
            else:
                roles["vector"].append(p)
    return roles


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped together and seen as one by schedulers and checkpoints.

    `param_groups` is the concatenation of the inner optimizers' group dicts (the same objects, not
    copies), so writing `group["lr"]` here sets it in the inner optimizer; `state` merges the inner
    states. `state_dict()` holds one state dict per inner optimizer, in order.
    """

    def __init__(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)
        if not self.optimizers:
            raise ValueError("CombinedOptimizer needs at least one optimizer")
        self._adding_inner_groups = True
        # Optimizer.__init__ sets up hooks and profiling; add_param_group keeps each dict object.
        super().__init__([g for opt in self.optimizers for g in opt.param_groups], defaults={})
        self._adding_inner_groups = False

    # Optimizer.__init__ assigns `self.state`; the inner optimizers own the state, so the
    # assignment is ignored and reads see their union.
    @property
    def state(self) -> dict[torch.Tensor, Any]:  # type: ignore[override]
        merged: dict[torch.Tensor, Any] = {}
        for opt in getattr(self, "optimizers", []):
            merged.update(opt.state)
        return merged

    @state.setter
    def state(self, value: Any) -> None:
        pass

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not getattr(self, "_adding_inner_groups", False):
            raise NotImplementedError("add the group to one of the inner optimizers (`.optimizers`) instead")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        inner = state_dict.get("optimizers")
        if not isinstance(inner, list) or len(inner) != len(self.optimizers):
            raise ValueError(
                f"state dict holds {len(inner) if isinstance(inner, list) else 'no'} inner optimizer states, "
                f"expected {len(self.optimizers)} ({', '.join(type(o).__name__ for o in self.optimizers)})"
            )
        for opt, sd in zip(self.optimizers, inner, strict=True):
            opt.load_state_dict(sd)
        # Loading replaces the inner group dicts with new ones: point at those, or a scheduler would
        # keep writing learning rates into dicts nobody reads.
        self.param_groups = [g for opt in self.optimizers for g in opt.param_groups]


def _group(name: str, params: list[nn.Parameter], **options: Any) -> list[dict[str, Any]]:
    # Empty groups are dropped (torch refuses an optimizer with no parameters at all).
    return [{"name": name, "params": params, **options}] if params else []


def build_optimizer(
    model: nn.Module, cfg: OptimizerConfig, extra_modules: Iterable[nn.Module] = ()
) -> torch.optim.Optimizer:
    """AdamW (`cfg.name == "adamw"`) or Muon + AdamW (`"muon"`) over the model and `extra_modules`.

    Groups carry a `name` (decay, no_decay, muon, adamw_decay, adamw_no_decay) for logging. Muon
    takes the 2-D `matrix` parameters; anything else a matrix could be (none in SmolLM3) falls
    back to AdamW with decay.
    """
    roles = parameter_roles(model, extra_modules)
    adamw = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps}
    no_decay = roles["embedding"] + roles["vector"]
    if cfg.name == "adamw":
        groups = _group("decay", roles["matrix"], weight_decay=cfg.weight_decay) + _group(
            "no_decay", no_decay, weight_decay=0.0
        )
        return torch.optim.AdamW(groups, **adamw)

    muon_params = [p for p in roles["matrix"] if p.ndim == 2]
    other_matrices = [p for p in roles["matrix"] if p.ndim != 2]
    muon_wd = cfg.weight_decay if cfg.muon_weight_decay is None else cfg.muon_weight_decay
    inner: list[torch.optim.Optimizer] = []
    if muon_params:
        inner.append(
            torch.optim.Muon(
                _group("muon", muon_params),
                lr=cfg.muon_lr,
                momentum=cfg.muon_momentum,
                weight_decay=muon_wd,
                nesterov=True,
                adjust_lr_fn=cfg.muon_adjust_lr,
            )
        )
    adamw_groups = _group("adamw_decay", other_matrices, weight_decay=cfg.weight_decay) + _group(
        "adamw_no_decay", no_decay, weight_decay=0.0
    )
    if adamw_groups:
        inner.append(torch.optim.AdamW(adamw_groups, **adamw))
    return CombinedOptimizer(inner)


# ---------------------------------------------------------------------------------------------
# QK-clip
#
# Why: with Muon (and at scale with AdamW too) some attention heads' query/key weights grow until
# the pre-softmax logits reach the hundreds or thousands; the softmax saturates, gradients vanish
# or explode, and the loss spikes. Kimi K2 (MuonClip) caps the largest logit of each head at a
# threshold tau by rescaling, after an optimizer step, the query and key weights of the heads whose
# largest logit S in the step's forward pass exceeded it: with gamma = tau / S, W_q and W_k of that
# head are each multiplied by sqrt(gamma), so its logits (bilinear in W_q, W_k) scale by gamma.
#
# How the per-head maximum is measured: `AttentionLogitTracker` hooks each attention module. Hooks
# on q_proj and k_proj keep their outputs (already computed by the forward, so no extra projection
# matmuls); a hook on the attention module then applies RoPE (on RoPE layers only; NoPE layers use
# the raw projections, as the model does), computes q.k * scaling for every query head against its
# key/value head, and takes the max over batch, queries and the keys the query may attend under
# the mask the module was given (plain causal when it got none; per-document when packed). This repeats
# the QK^T product of attention (memory-efficient kernels never materialise the scores), in query
# chunks to bound memory, under no_grad: roughly the cost of the attention score computation once
# more, a few percent of a training step for small models. Trainers can switch `enabled` off on
# steps where clipping is skipped.
#
# Grouped-query attention: G query heads share one key head, so scaling a key head by sqrt(gamma)
# would also shrink the logits of the other heads in its group. `qk_clip` instead scales the shared
# key head by sqrt(gamma_min) (the strongest clip in the group) and each query head h by
# gamma_h / sqrt(gamma_min), so every head's logits scale by exactly its own gamma_h (1 for heads
# under the threshold). For the head that needs the most clipping this is Kimi's sqrt split; heads
# in its group that did not need clipping keep their logits unchanged (their W_q grows by the
# factor its shared keys shrank). Heads in groups with no head over the threshold are not touched,
# bit for bit.


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """SmolLM3 (and Llama-like) self-attention modules: anything with q/k projections and a layer index."""
    found = []
    for mod in model.modules():
        if all(hasattr(mod, a) for a in ("q_proj", "k_proj", "head_dim", "num_key_value_groups", "layer_idx")):
            found.append(mod)
    if not found:
        raise ValueError(f"no attention modules with q_proj/k_proj found in {type(model).__name__}")
    return found


def _allowed_keys(attention_mask: torch.Tensor | None, q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """Boolean [B|1, 1|H, Tq, Tk] of the (query, key) pairs the attention actually used."""
    if attention_mask is None:
        # sdpa was told is_causal: plain causal, aligned to the end when keys include a cache.
        offset = k_len - q_len
        q_idx = torch.arange(q_len, device=device)[:, None] + offset
        return (torch.arange(k_len, device=device)[None, :] <= q_idx)[None, None]
    mask = attention_mask[..., -q_len:, -k_len:]
    if mask.dtype == torch.bool:
        return mask
    # Additive float mask: masked entries hold the dtype's minimum (or -inf).
    return mask > torch.finfo(mask.dtype).min / 2


def max_attention_logits(
    module: nn.Module,
    q_proj_out: torch.Tensor,
    k_proj_out: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
    attention_mask: torch.Tensor | None,
    chunk_elems: int = 1 << 24,
) -> torch.Tensor:
    """[num_heads] largest pre-softmax logit q.k * scaling of each query head of one attention module."""
    hd, groups = module.head_dim, module.num_key_value_groups
    bsz, q_len = q_proj_out.shape[:2]
    q = q_proj_out.float().view(bsz, q_len, -1, hd).transpose(1, 2)  # [B, H, T, hd]
    k = k_proj_out.float().view(bsz, k_proj_out.shape[1], -1, hd).transpose(1, 2)  # [B, KV, T, hd]
    if getattr(module, "use_rope", True) and position_embeddings is not None:
        cos, sin = (t.float() for t in position_embeddings)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
    n_kv, k_len = k.shape[1], k.shape[2]
    q = q.view(bsz, n_kv, groups, q_len, hd)
    allowed = _allowed_keys(attention_mask, q_len, k_len, q.device)
    if allowed.shape[1] != 1:  # a per-head mask: arrange like the grouped scores
        allowed = allowed.view(allowed.shape[0], n_kv, groups, q_len, k_len)
    else:
        allowed = allowed[:, :, None]  # [B|1, 1, 1, Tq, Tk]
    best = torch.full((n_kv, groups), float("-inf"), device=q.device)
    rows = max(1, chunk_elems // max(1, bsz * n_kv * groups * k_len))
    for start in range(0, q_len, rows):
        stop = min(q_len, start + rows)
        scores = torch.einsum("bkgqd,bktd->bkgqt", q[:, :, :, start:stop], k) * module.scaling
        scores = scores.masked_fill(~allowed[..., start:stop, :], float("-inf"))
        best = torch.maximum(best, scores.amax(dim=(0, 3, 4)))
    # Query head h = kv * groups + g: the order in which transformers' repeat_kv expands key heads.
    return best.reshape(-1)


class AttentionLogitTracker:
    """Records, per layer, the running max attention logit of every query head during forwards.

    Use as a context manager or call `remove()`; `reset()` between optimizer steps. Intended for
    training forwards (no KV cache of earlier tokens).
    """

    def __init__(self, model: nn.Module, *, chunk_elems: int = 1 << 24) -> None:
        self.enabled = True
        self.chunk_elems = chunk_elems
        self._max: dict[int, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for attn in _attention_modules(model):
            captured: dict[str, torch.Tensor] = {}
            self._handles += [
                attn.q_proj.register_forward_hook(self._capture(captured, "q")),
                attn.k_proj.register_forward_hook(self._capture(captured, "k")),
                attn.register_forward_hook(self._measure(captured), with_kwargs=True),
            ]

    def _capture(self, captured: dict, key: str):
        def hook(_mod, _inputs, output):
            if self.enabled:
                captured[key] = output.detach()

        return hook

    def _measure(self, captured: dict):
        def hook(mod, args, kwargs, _output):
            if not self.enabled or "q" not in captured or "k" not in captured:
                return
            q, k = captured.pop("q"), captured.pop("k")
            pos = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
            mask = kwargs.get("attention_mask", args[2] if len(args) > 2 else None)
            with torch.no_grad():
                m = max_attention_logits(mod, q, k, pos, mask, self.chunk_elems)
            prev = self._max.get(mod.layer_idx)
            self._max[mod.layer_idx] = m if prev is None else torch.maximum(prev, m)

        return hook

    def max_logits(self) -> dict[int, torch.Tensor]:
        """Layer index -> [num_heads] max logit since the last reset."""
        return dict(self._max)

    def reset(self) -> None:
        self._max = {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> AttentionLogitTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@torch.no_grad()
def measure_max_logits(model: nn.Module, input_ids: torch.Tensor, **forward_kwargs: Any) -> dict[int, torch.Tensor]:
    """One no-grad forward with a tracker: layer -> [num_heads] max logits (for evaluation and tests)."""
    with AttentionLogitTracker(model) as tracker:
        model(input_ids, use_cache=False, **forward_kwargs)
        return tracker.max_logits()


@dataclass
class QKClipResult:
    """What `qk_clip` saw and did, for logging."""

    max_logits: dict[int, torch.Tensor]
    clipped_heads: dict[int, list[int]] = field(default_factory=dict)

    @property
    def max_logit(self) -> float:
        return max((float(v.max()) for v in self.max_logits.values()), default=float("nan"))

    def metrics(self) -> dict[str, float]:
        out = {"qk/max_logit": self.max_logit, "qk/clipped_heads": float(sum(map(len, self.clipped_heads.values())))}
        for layer, values in sorted(self.max_logits.items()):
            out[f"qk/max_logit/layer_{layer}"] = float(values.max())
        return out


@torch.no_grad()
def qk_clip(model: nn.Module, max_logits: Mapping[int, torch.Tensor], threshold: float) -> QKClipResult:
    """Scale down the query/key weights of every head whose max logit exceeded `threshold`.

    Call after `optimizer.step()` with the tracker's maxima from that step's forward. Afterwards,
    on the same inputs to the layer, each head's largest logit is at most `threshold` and heads that
    were below it compute exactly the logits they did. (Inputs to later layers change once an
    earlier layer is clipped, so the bound is per layer, as in Kimi K2.)
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    result = QKClipResult(max_logits={k: v.detach().clone() for k, v in max_logits.items()})
    for attn in _attention_modules(model):
        s = max_logits.get(attn.layer_idx)
        if s is None:
            continue
        s = s.to(attn.q_proj.weight.device, torch.float32)
        over = s > threshold
        if not over.any():
            continue
        gamma = torch.where(over, threshold / s, torch.ones_like(s))
        groups, hd = attn.num_key_value_groups, attn.head_dim
        gamma_g = gamma.view(-1, groups)  # [KV, G]
        k_scale = gamma_g.min(dim=1).values.sqrt()  # [KV]
        # Groups with no head over the threshold get exactly 1.0 for both (sqrt(1) = 1/1 = 1).
        q_scale = (gamma_g / k_scale[:, None]).reshape(-1)  # [H]
        _scale_heads(attn.q_proj, q_scale, hd)
        _scale_heads(attn.k_proj, k_scale, hd)
        result.clipped_heads[attn.layer_idx] = over.nonzero().flatten().tolist()
    return result


def _scale_heads(proj: nn.Linear, scale: torch.Tensor, head_dim: int) -> None:
    """Multiply the output rows of each head (head_dim consecutive rows) by its factor."""
    if bool((scale == 1).all()):
        return
    w = proj.weight
    w.copy_((w.view(-1, head_dim, w.shape[1]).float() * scale[:, None, None]).view_as(w).to(w.dtype))
    if proj.bias is not None:
        b = proj.bias
        b.copy_((b.view(-1, head_dim).float() * scale[:, None]).view_as(b).to(b.dtype))


__all__ = [
    "AttentionLogitTracker",
    "CombinedOptimizer",
    "QKClipResult",
    "build_optimizer",
    "max_attention_logits",
    "measure_max_logits",
    "parameter_roles",
    "qk_clip",
]
