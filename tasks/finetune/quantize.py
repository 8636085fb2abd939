"""Quantise a base to 4-bit once and save it, so QLoRA runs load the packed weights only.

transformers quantises a full-precision checkpoint while it reads it, through a memory map: every
page of the fp32 file that was read stays resident until the map closes, so a QLoRA run that
quantised its base on the fly peaked at about the fp32 file plus its 4-bit copy, before training
had begun. Saved once (transformers' bitsandbytes integration serialises each 4-bit weight with
its quantisation state: absmax, the code, the nested scales), the 4-bit model reloads from a file
about a sixth of the fp32 one, and a sweep or a second adapter on the same base reuses it.

This module is the quantisation step's code (its cache key hashes this file), kept apart from
the adapters so that editing how adapters are trained or merged does not re-quantise the base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from smolforge.model_source import model_folder
from smolforge.tasks.curate.tokenizer import load_tokenizer
from smolforge.tasks.finetune.config import QuantSettings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def quantization_config(settings: QuantSettings) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=settings.quant_type,
        bnb_4bit_use_double_quant=settings.double_quant,
        bnb_4bit_compute_dtype=DTYPES[settings.compute_dtype],
    )


def load_quantising(folder: Path, settings: QuantSettings, device: torch.device) -> torch.nn.Module:
    """The full-precision model in `folder`, quantised to 4-bit as it is read."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        model_folder(folder), quantization_config=quantization_config(settings), device_map={"": str(device)}
    )


def saved_settings(folder: Path) -> dict[str, Any]:
    """The 4-bit settings a quantised folder was saved with (its config.json's
    `quantization_config`), in `QuantSettings`' terms; {} for a full-precision folder."""
    config = json.loads((model_folder(folder) / "config.json").read_text(encoding="utf-8"))
    quant = config.get("quantization_config") or {}
    if not quant.get("load_in_4bit"):
        return {}
    return {
        "quant_type": quant.get("bnb_4bit_quant_type"),
        "double_quant": quant.get("bnb_4bit_use_double_quant"),
        "compute_dtype": quant.get("bnb_4bit_compute_dtype"),
    }


def saved_with(folder: Path, settings: QuantSettings) -> bool:
    """Whether `folder` holds a 4-bit model saved with exactly `settings`."""
    return saved_settings(folder) == settings.model_dump(mode="json")


def quantize_base(folder: Path, settings: QuantSettings, out: Path) -> dict[str, float]:
    """Load the full-precision base in `folder` as 4-bit blocks and save it, with its tokenizer,
    into `out`. Returns how many linear layers were quantised and the file sizes in MiB."""
    from bitsandbytes.nn import Linear4bit


    source = model_folder(folder)
    model = load_quantising(source, settings, torch.device("cpu"))
    layers = sum(isinstance(m, Linear4bit) for m in model.modules())
    model.save_pretrained(out)
    load_tokenizer(str(source)).save_pretrained(out)
    del model
    if not saved_with(out, settings):
        raise RuntimeError(
            f"the 4-bit model saved in {out} records {saved_settings(out)}, not the settings asked for "
            f"({settings.model_dump(mode='json')}): this transformers version serialises bitsandbytes settings differently"
        )

    def mib(path: Path) -> float:
        return sum(f.stat().st_size for f in path.glob("*.safetensors")) / 2**20

    return {"quantized_layers": float(layers), "source_mib": round(mib(source), 2), "quantized_mib": round(mib(out), 2)}
