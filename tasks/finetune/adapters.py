"""Load the base for a fine-tuning method, put a peft adapter on it, merge it back where it can be.

* `lora`: the base in full precision, frozen; peft adds A and B to each target module.
* `qlora`: the base as 4-bit blocks through transformers' bitsandbytes integration (NF4, double
  quantisation, a compute dtype): read from a folder `quantize.quantize_base` saved once (the
  stage's way: only the packed weights are read), or quantised from the full-precision base as it
  is read; then `peft.prepare_model_for_kbit_training` (norms and embeddings to fp32, input
  gradients on, gradient checkpointing), then the same adapters, which stay in full precision.
* `full`: the base in full precision, every weight trained.
* `ia3`: the base frozen; peft scales the outputs of the attention targets and the inputs of the
  feed-forward ones by learned vectors. Merges like LoRA.
* `prefix`, `prompt`: the base frozen; peft learns key/value prefixes in every layer (prefix) or
  input embeddings in front of the record (prompt). Nothing to fold into a weight: the result is
  the base plus the adapter beside it (`model_source.ADAPTERS`).

Every adapter is made from peft's own config class for its method (`peft_config`). The checks that
need the model (target modules that exist, a rank no layer is too small for, bitsandbytes
installed) run on the config alone, with the model built on the meta device, so a bad setting is
refused in milliseconds, before data or weights are read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smolforge.errors import ConfigError
from smolforge.model_source import keep_logits_to_inputs, model_folder
from smolforge.tasks.finetune import quantize
from smolforge.tasks.finetune.config import FinetuneConfig


def linear_layers(folder: Path) -> dict[str, tuple[int, int]]:
    """Full module name -> (out_features, in_features) of every linear layer below the output head,
    read from the config alone: the model is built on the meta device, which allocates nothing."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_folder(folder))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    return {n: (m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}


def check_bitsandbytes() -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "finetune.method=qlora loads the base in 4-bit through bitsandbytes, which is not installed: "
            "pip install bitsandbytes (or choose finetune.method=lora)"
        )


def check_against_model(config: FinetuneConfig, folder: Path) -> dict[str, tuple[int, int]]:
    """Refuse settings the base cannot take; return the linear layers the adapters will wrap."""
    if config.method == "qlora":
        check_bitsandbytes()
    from transformers import AutoConfig

    context = getattr(AutoConfig.from_pretrained(model_folder(folder)), "max_position_embeddings", None)
    if context is not None and config.max_seq_len > context:
        raise ConfigError(
            f"finetune.max_seq_len={config.max_seq_len} is longer than the base model's context "
            f"({context} positions, {model_folder(folder)}); use max_seq_len <= {context}"
        )
    if config.method in ("full", "prefix", "prompt"):  # no module is wrapped; the soft prompt's room is the config's check
        return {}
    layers = linear_layers(folder)
    short = sorted({name.rsplit(".", 1)[-1] for name in layers})
    setting, wanted = ("ia3", config.ia3.target_modules) if config.method == "ia3" else ("lora", config.lora.target_modules)
    unknown = [t for t in wanted if t not in short]
    if unknown:
        raise ConfigError(
            f"finetune.{setting}.target_modules: {unknown} are not linear modules of the base model "
            f"({model_folder(folder)}); its linear modules are: {short}"
        )
    targets = {n: shape for n, shape in layers.items() if n.rsplit(".", 1)[-1] in wanted}
    if config.method == "ia3":
        return targets
    smallest_name, smallest = min(targets.items(), key=lambda kv: min(kv[1]))
    if config.lora.r > min(smallest):
        raise ConfigError(
            f"finetune.lora.r={config.lora.r} is larger than layer {smallest_name} allows "
            f"(out x in = {smallest[0]} x {smallest[1]}: a rank above {min(smallest)} adds parameters but no rank); "
            f"use r <= {min(smallest)} or leave that module out of target_modules"
        )
    return targets


def keep_4bit_weights_trainable(model: nn.Module) -> int:
    """Turn off bitsandbytes' CPU inference repacking on every 4-bit linear layer; returns how many.

    On a CPU with AVX512-BF16, `Linear4bit.forward` in eval mode (input without grad) repacks its
    weight into a layout for an inference kernel (`gemv_4bit`) and never packs it back. After an
    evaluation pass in the middle of training, every later training forward then runs that kernel,
    which has no backward: no gradient flows through the frozen base to the layers below, so the
    adapters of all but the last layers get wrong gradients, silently (torch only warns). With the
    repacking off, evaluation uses the same dequantise-and-matmul path as training.
    """
    from bitsandbytes.nn import Linear4bit

    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def release_checkpoint_file(model: nn.Module) -> int:
    """Give the weights that stay in full precision (embeddings, norms) their own memory; returns
    how many parameters were copied.

    On a CPU, transformers hands out those tensors as views of the memory-mapped safetensors file.
    While one view lives, the whole mapping does, and every page of the file that was read to
    quantise the other weights stays resident: a 4-bit model would keep its full-precision checkpoint
    in memory (~440 MiB for the 111M-parameter benchmark base, more than the model itself). Copying
    the few unquantised tensors lets the mapping close.
    """
    from bitsandbytes.nn import Params4bit

    copied = 0
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not isinstance(param, Params4bit) and param.device.type == "cpu":
                param.data = param.data.clone()
                copied += 1
    return copied


def load_base(folder: Path, config: FinetuneConfig, device: torch.device, quantized: Path | None = None) -> nn.Module:
    """The base model as the method needs it, on `device`, ready for adapters (or for full training).

    For qlora, `quantized` is the folder `quantize.quantize_base` saved from `folder` with
    `config.qlora`'s settings; without it the base is quantised here, as it is read."""
    from transformers import AutoModelForCausalLM

    path = model_folder(folder)
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        check_bitsandbytes()
        if quantized is None:
            model = quantize.load_quantising(path, config.qlora, device)
            release_checkpoint_file(model)
        else:
            if not quantize.saved_with(quantized, config.qlora):
                saved = quantize.saved_settings(quantized)
                raise ValueError(
                    f"{model_folder(quantized)} holds a base quantised with {saved or 'no 4-bit settings'}, "
                    f"not with finetune.qlora = {config.qlora.model_dump(mode='json')}"
                )
            # Every tensor is read from the 4-bit file, whose pages are the weights themselves:
            # nothing else is mapped, so there is no checkpoint to release.
            model = AutoModelForCausalLM.from_pretrained(model_folder(quantized), device_map={"": str(device)})
        keep_4bit_weights_trainable(model)
        # Non-reentrant checkpointing: it works when the checkpointed block's inputs do not require
        # gradients and keeps the RNG state for dropout in the recomputation.
        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.uses_checkpointing(),
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    if config.uses_checkpointing():
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.method != "full":
            model.enable_input_require_grads()  # frozen embeddings: the checkpointed blocks still need a graph
    return model


def peft_config(config: FinetuneConfig, tokenizer_folder: Path) -> Any:
    """peft's own config for the method: LoraConfig (lora, qlora), IA3Config, PrefixTuningConfig or
    PromptTuningConfig. A prompt initialised from text reads the base's tokenizer from its folder."""
    import peft

    common = {"task_type": "CAUSAL_LM"}
    if config.method == "ia3":
        return peft.IA3Config(
            target_modules=list(config.ia3.target_modules), feedforward_modules=list(config.ia3.feedforward_modules), **common
        )
    if config.method == "prefix":
        return peft.PrefixTuningConfig(
            num_virtual_tokens=config.prefix.num_virtual_tokens, prefix_projection=config.prefix.projection, **common
        )
    if config.method == "prompt":
        text = config.prompt.init_text
        init = {"prompt_tuning_init": peft.PromptTuningInit.RANDOM}
        if text is not None:
            init = {
                "prompt_tuning_init": peft.PromptTuningInit.TEXT, "prompt_tuning_init_text": text,
                "tokenizer_name_or_path": str(tokenizer_folder),
            }
        return peft.PromptTuningConfig(num_virtual_tokens=config.prompt.num_virtual_tokens, **init, **common)
    settings = config.lora
    return peft.LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules), bias="none", **common,
    )


def add_adapter(model: nn.Module, config: FinetuneConfig, tokenizer_folder: Path) -> nn.Module:
    """Wrap `model` with a fresh adapter named `default` for `config.method`; its random
    initialisation comes from `config.seed`."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = get_peft_model(model, peft_config(config, tokenizer_folder))
    return keep_logits_to_inputs(model)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def merge_adapter(base_folder: Path, adapter_dir: Path) -> nn.Module:
    """The base in full precision with the adapter folded into its weights (`merge_and_unload`;
    LoRA and (IA)³ adapters, not soft prompts).

    For QLoRA this is the usual choice: the adapter goes onto the original weights, not onto their
    4-bit copy, so the merged model is a plain full-precision transformers model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_folder(base_folder), dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
