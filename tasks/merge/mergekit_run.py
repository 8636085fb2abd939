"""One merge through mergekit's Python API: our method settings become a `MergeConfiguration`,
`run_merge` writes the merged model, and the folder keeps the config it was made from.

mergekit has no architecture file for SmolLM3; it infers the layout from the tensor names (and
warns), and the output keeps `SmolLM3ForCausalLM` with tied embeddings. `model+lora` inputs fail
for SmolLM3 (`LoRA not merged`), so adapters are folded into their base (`unload_adapter`) before
they get here.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from smolforge.tasks.merge.config import METHODS, MergeMethod


def mergekit_version() -> str:
    from importlib.metadata import version

    return version("mergekit")


def mergekit_config(method: MergeMethod, models: list[Path], base: Path | None, dtype: str) -> dict[str, Any]:
    """mergekit's configuration (as its YAML would read) for `method` over `models`; `base` is the
    task vectors' origin (task-vector methods only; slerp's base is its first model)."""
    shared, each = method.parameters(len(models))
    config: dict[str, Any] = {
        "merge_method": method.method,
        "models": [{"model": str(m), **({"parameters": p} if p else {})} for m, p in zip(models, each, strict=True)],
        "dtype": dtype,
    }
    if shared:
        config["parameters"] = shared
    if METHODS[method.method].needs_base:
        config["base_model"] = str(base)
    elif method.method == "slerp":
        config["base_model"] = str(models[0])
    return config


def run_mergekit(config: dict[str, Any], out: Path, threads: int | None = None) -> float:
    """Write the merge `config` describes into `out` (a transformers folder with the first model's
    tokenizer); returns the seconds `run_merge` took."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    options = MergeOptions(
        lazy_unpickle=True, low_cpu_memory=True, copy_tokenizer=True, write_model_card=False, quiet=True,
        num_threads=threads,
    )
    parsed = MergeConfiguration.model_validate(config)
    # mergekit warns about the SmolLM3 layout it infers, on every merge: known, and harmless here
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        started = time.perf_counter()
        run_merge(parsed, str(out), options=options)
        return time.perf_counter() - started
    finally:
        logger.setLevel(level)


def merge_models(method: MergeMethod, models: list[Path], base: Path | None, out: Path, dtype: str = "float32") -> dict[str, Any]:
    """Merge `models` with `method` into `out`: the model, its tokenizer, and `mergekit.json` (the
    configuration mergekit ran). Returns the seconds and the configuration."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    config = mergekit_config(method, models, base, dtype)
    seconds = run_mergekit(config, out)
    (out / "mergekit.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return {"merge_seconds": round(seconds, 4), "config": config}


def unload_adapter(base: Path, adapter: Path, out: Path) -> None:
    """A LoRA adapter folded into its base (`merge_and_unload`), saved with the base's tokenizer."""
    from smolforge.tasks.curate.tokenizer import load_tokenizer
    from smolforge.tasks.finetune.adapters import merge_adapter

    merge_adapter(base, adapter).save_pretrained(out)
    load_tokenizer(str(base)).save_pretrained(out)
