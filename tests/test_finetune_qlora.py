"""QLoRA is correct, not only running: the adapters on a 4-bit NF4 base get the gradients they
would get on a full-precision base holding the same (dequantised) weights, at every step,
including after an evaluation pass in the middle of training; and the 4-bit base saved once
(the stage's way) reloads to exactly what quantising on the fly gives."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from smolforge.models.architecture import build_model
from smolforge.models.config import ModelShape
from smolforge.tasks.curate.tokenizer import train_tokenizer
from smolforge.tasks.finetune import adapters
from smolforge.tasks.finetune.config import FinetuneConfig
from smolforge.tasks.finetune.quantize import quantize_base

bnb = pytest.importorskip("bitsandbytes")
from bitsandbytes.functional import dequantize_4bit  # noqa: E402
from bitsandbytes.nn import Linear4bit  # noqa: E402

VOCAB = 320
# 4-bit blocks hold 64 weights: every projection here has a multiple of 64 of them.
SHAPE = ModelShape(
    hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=256,
    rope_theta=10_000.0, nope_every=0, max_seq_len=64,
)
CONFIG = FinetuneConfig(method="qlora", device="cpu", lora={"r": 8, "alpha": 16, "dropout": 0.0})


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qlora-base")
    train_tokenizer(["the mill by the river turns when the river runs"] * 20, vocab_size=VOCAB, out_dir=folder)
    build_model(SHAPE, vocab_size=VOCAB, bos_id=0, eos_id=1, pad_id=2, seed=3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def quantized_folder(base_folder, tmp_path_factory):
    """The base saved in 4-bit once, as the flow's quantisation step does."""
    folder = tmp_path_factory.mktemp("qlora-base-4bit")
    quantize_base(base_folder, CONFIG.qlora, folder)
    return folder


def batches(n: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(5, VOCAB, (2, 16), generator=gen)
        labels = ids.clone()
        labels[:, :6] = -100  # a prompt: no loss there
        out.append({"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)})
    return out


def twin_models(base_folder, *, fix: bool = True, quantized=None):
    """The QLoRA model (quantised on the fly, or read from the saved 4-bit folder `quantized`), and
    a full-precision model whose targeted weights are the dequantised 4-bit ones, each with the
    same freshly initialised adapter."""
    from transformers import AutoModelForCausalLM

    quantised = adapters.load_base(base_folder, CONFIG, torch.device("cpu"), quantized)
    if not fix:
        for m in quantised.modules():
            if isinstance(m, Linear4bit):
                m.support_avx512bf16_for_cpu = bnb.functional.has_avx512bf16()
    reference = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    swapped = 0
    for name, module in quantised.named_modules():
        if isinstance(module, Linear4bit):
            weight = dequantize_4bit(module.weight.data, module.weight.quant_state).float()
            target = reference.get_submodule(name)
            assert target.weight.shape == weight.shape
            target.weight.data.copy_(weight)
            swapped += 1
    assert swapped == 7 * SHAPE.num_layers
    quantised = adapters.add_adapter(quantised, CONFIG, base_folder)
    reference = adapters.add_adapter(reference, CONFIG, base_folder)
    quantised.train(), reference.train()
    return quantised, reference


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def step(model, optimizer, batch) -> dict[str, torch.Tensor]:
    loss = model(**batch).loss
    loss.backward()
    grads = lora_grads(model)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grads


def eval_pass(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        loss = model(**batch).loss.item()
    model.train()
    return loss


def run_in_lockstep(base_folder, fix: bool = True, n_steps: int = 7, quantized=None):
    quantised, reference = twin_models(base_folder, fix=fix, quantized=quantized)
    for (n1, p1), (n2, p2) in zip(
        ((n, p) for n, p in quantised.named_parameters() if p.requires_grad),
        ((n, p) for n, p in reference.named_parameters() if p.requires_grad),
        strict=True,
    ):
        assert n1 == n2 and torch.equal(p1, p2)  # same adapters to start from
    opt_q = torch.optim.AdamW([p for p in quantised.parameters() if p.requires_grad], lr=1e-2)
    opt_r = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=1e-2)
    data = batches(n_steps)
    history = []
    for i, batch in enumerate(data):
        if i == 4:  # evaluation in the middle of training
            history.append(("eval", eval_pass(quantised, data[0]), eval_pass(reference, data[0])))
        history.append(("step", step(quantised, opt_q, batch), step(reference, opt_r, batch)))
    return history


@pytest.mark.parametrize("source", ["saved 4-bit folder", "quantised on the fly"])
def test_qlora_gradients_match_a_full_precision_model_with_the_dequantised_weights(base_folder, quantized_folder, source):
    history = run_in_lockstep(base_folder, quantized=quantized_folder if source == "saved 4-bit folder" else None)
    steps = [h for h in history if h[0] == "step"]
    assert len(steps) == 7
    for i, (_, grads_q, grads_r) in enumerate(steps):
        assert grads_q.keys() == grads_r.keys() and len(grads_q) == 2 * 7 * SHAPE.num_layers
        for name in grads_q:
            torch.testing.assert_close(grads_q[name], grads_r[name], rtol=1e-4, atol=1e-7, msg=f"step {i} {name}")
        # lora_B starts at zero, so A's gradients are zero on the first step only: later they count
        if i > 0:
            assert all(grads_q[n].abs().sum() > 0 for n in grads_q), f"step {i}: some adapter got no gradient"
    (_, eval_q, eval_r), = [h for h in history if h[0] == "eval"]
    assert eval_q == pytest.approx(eval_r, rel=1e-5)


def test_gradients_differ_from_the_dequantised_reference_by_little(base_folder):
    """The reference is not the 4-bit model itself under another name: the original weights give
    different gradients (quantisation error), the dequantised ones the same."""
    from transformers import AutoModelForCausalLM

    quantised, _ = twin_models(base_folder)
    original = adapters.add_adapter(AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32), CONFIG, base_folder)
    batch = batches(1)[0]
    diff = abs(quantised(**batch).loss.item() - original(**batch).loss.item())
    assert diff > 1e-6


@pytest.mark.skipif(not bnb.functional.has_avx512bf16(), reason="the repacking only happens on AVX512-BF16 CPUs")
def test_without_the_fix_an_eval_pass_silently_breaks_the_gradients(base_folder):
    history = run_in_lockstep(base_folder, fix=False, n_steps=5)
    steps = [h for h in history if h[0] == "step"]
    before, after = steps[3], steps[4]  # the steps just before and just after the evaluation
    for name in before[1]:
        torch.testing.assert_close(before[1][name], before[2][name], rtol=1e-4, atol=1e-7)
    assert any(not torch.allclose(after[1][n], after[2][n], rtol=1e-2, atol=1e-6) for n in after[1])


def test_qlora_stores_the_base_in_4bit_nf4_with_double_quantisation(base_folder):
    model = adapters.load_base(base_folder, CONFIG, torch.device("cpu"))
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert len(layers) == 7 * SHAPE.num_layers
    state = layers[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested and layers[0].compute_dtype == torch.float32
    assert model.is_gradient_checkpointing


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the Linux process memory map")
def test_the_4bit_model_does_not_keep_its_checkpoint_file_mapped(base_folder):
    """The full-precision file is read once to quantise it; keeping it mapped (through the views
    transformers gives the unquantised tensors) would keep all of it resident."""
    checkpoint = str(base_folder / "model.safetensors")
    model = adapters.load_base(base_folder, CONFIG, torch.device("cpu"))
    gc.collect()
    assert checkpoint not in Path("/proc/self/maps").read_text()
    assert model.get_input_embeddings().weight.sum().isfinite()


def test_the_saved_4bit_base_reloads_to_what_quantising_on_the_fly_gives(base_folder, quantized_folder):
    on_the_fly = adapters.load_base(base_folder, CONFIG, torch.device("cpu"))
    saved = adapters.load_base(base_folder, CONFIG, torch.device("cpu"), quantized_folder)
    layers = dict(saved.named_modules())
    compared = 0
    for name, module in on_the_fly.named_modules():
        if isinstance(module, Linear4bit):
            other = layers[name]
            assert isinstance(other, Linear4bit) and other.weight.quant_state.quant_type == "nf4"
            assert other.weight.quant_state.nested and other.compute_dtype == torch.float32
            assert torch.equal(module.weight.data, other.weight.data)  # the same packed 4-bit codes
            assert torch.equal(
                dequantize_4bit(module.weight.data, module.weight.quant_state),
                dequantize_4bit(other.weight.data, other.weight.quant_state),
            )
            compared += 1
    assert compared == 7 * SHAPE.num_layers
    plain = {n: p for n, p in saved.named_parameters() if not isinstance(p, bnb.nn.Params4bit)}
    for name, param in on_the_fly.named_parameters():
        if not isinstance(param, bnb.nn.Params4bit):  # embeddings and norms, kept in full precision
            assert torch.equal(param, plain[name]), name
    assert saved.is_gradient_checkpointing
    fp32 = (base_folder / "model.safetensors").stat().st_size
    assert (quantized_folder / "model.safetensors").stat().st_size < 0.5 * fp32
    assert (quantized_folder / "tokenizer.json").read_text() == (base_folder / "tokenizer.json").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the Linux process memory map")
def test_loading_the_saved_4bit_base_never_maps_the_full_precision_file(base_folder, quantized_folder):
    model = adapters.load_base(base_folder, CONFIG, torch.device("cpu"), quantized_folder)
    assert str(base_folder / "model.safetensors") not in Path("/proc/self/maps").read_text()
    assert model.get_input_embeddings().weight.sum().isfinite()


def test_a_4bit_folder_saved_with_other_settings_is_refused(base_folder, quantized_folder):
    fp4 = CONFIG.model_copy(update={"qlora": CONFIG.qlora.model_copy(update={"quant_type": "fp4"})})
    with pytest.raises(ValueError, match=r"quantised with .*'quant_type': 'nf4'.* not with finetune.qlora = .*'fp4'"):
        adapters.load_base(base_folder, fp4, torch.device("cpu"), quantized_folder)


def test_sweep_trials_reuse_the_saved_4bit_base_only_with_its_own_settings(quantized_folder):
    from smolforge.flows.sweep_objectives import quantized_for

    assert quantized_for(CONFIG, quantized_folder) == quantized_folder
    assert quantized_for(CONFIG, None) is None
    fp4 = CONFIG.model_copy(update={"qlora": CONFIG.qlora.model_copy(update={"quant_type": "fp4"})})
    assert quantized_for(fp4, quantized_folder) is None  # a trial sweeping the 4-bit settings quantises itself
    assert quantized_for(CONFIG.model_copy(update={"method": "lora"}), quantized_folder) is None
