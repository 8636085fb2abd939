"""Where a model comes from: the pipeline's own artifact, the MLflow registry, a folder or the hub.

Distillation's teacher and fine-tuning's base are both named this way. Whatever the origin, the
model becomes an artifact holding `model/` (config, weights, tokenizer) keyed by the content of
those files, so the steps downstream are keyed by what the model is, not by how it was named: an
alias that moves to another version gives a new key, and the same weights reached by two names
give the same one.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smolforge import tracking
from smolforge.artifacts import ArtifactRef, file_hash, stable_hash
from smolforge.errors import ConfigError
from smolforge.runtime import Runtime

if TYPE_CHECKING:  # mlflow is imported where it is used: the CLI's start-up stays light
    from mlflow.entities.model_registry import ModelVersion

REGISTRY_SCHEMES = ("models:/", "runs:/")
KIND = "model-import"
# A transformers folder may carry peft adapters that were not merged into it (prefix and prompt
# tuning cannot be; several adapters on one base are kept apart): `ADAPTERS/<name>/` beside the
# base's weights. `load_causal_lm` puts them on the base; `DEFAULT_ADAPTER` is the one a fine-tune
# trained alone is saved as.
ADAPTERS = "adapters"
DEFAULT_ADAPTER = "default"
# Where a model logged as an MLflow pyfunc (base + adapters) keeps that folder in the logged model.
PYFUNC_MODEL = Path("artifacts") / "model"


class ModelSourceError(ConfigError):
    """A model reference that names nothing usable."""


def model_folder(folder: str | Path) -> Path:
    """A transformers folder, or an artifact / registered model folder that holds one in `model/`."""
    folder = Path(folder)
    for candidate in (folder / "model", folder):
        if (candidate / "config.json").is_file():
            return candidate
    raise ModelSourceError(f"{folder} holds no transformers model (no config.json in it or in its model/ folder)")


def registry_version(spec: str) -> ModelVersion | None:
    """The registry version a `models:/name@alias` or `models:/name/version` reference names (with
    its tags); None for any other reference. A name that is not registered, a version or an alias
    it does not have: an error that names what the registry does hold."""
    if not spec.startswith("models:/"):
        return None
    from mlflow.exceptions import MlflowException

    name, _, alias = spec.removeprefix("models:/").partition("@")
    if not alias:
        name, _, number = name.rpartition("/")
    client = tracking.client()
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models())
        raise ModelSourceError(f"{spec}: no registered model {name!r}; registered: {', '.join(names) or 'none'}") from None
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    except MlflowException:
        if alias:
            held = ", ".join(f"@{a} (version {v})" for a, v in sorted(model.aliases.items()))
            raise ModelSourceError(f"{spec}: {name} has no alias {alias!r}; its aliases: {held or 'none'}") from None
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        raise ModelSourceError(f"{spec}: {name} has no version {number!r}; its versions: {versions or 'none'}") from None


def _looks_like_path(spec: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else can only be meant as a local folder."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec


@dataclass(frozen=True)
class RegisteredModel:
    """A registered version's files, as the transformers flavor logs them (`smolforge.registry`)."""

    folder: Path  # the transformers folder: config, weights, generation config
    tokenizer: Path  # the tokenizer's folder: MLflow keeps it apart, in `components/tokenizer/`
    task: str | None  # as it was registered (the MLmodel's metadata): `llm/v1/chat` or `llm/v1/completions`


def registered_model(spec: str, scratch: Path, setting: str) -> RegisteredModel:
    """The files a `models:/` (or `runs:/`) reference names. When the artifact store is a local
    folder (the embedded store's, or any `file://` root) they are read where they are, never
    written to: copying a model's weights out of it would cost a second copy of them on disk and
    the time to write it. From any other store they are downloaded into `scratch`."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    tracking._mlflow()  # the project's tracking URI, where the registry lives
    try:
        version = registry_version(spec)  # a name, version or alias that does not exist: say what does
    except ModelSourceError as exc:
        raise ModelSourceError(f"{setting}={exc}") from None
    repository = None
    if version is not None:
        location = tracking.client().get_model_version_download_uri(version.name, version.version)
        repository = get_artifact_repository(location)
    if isinstance(repository, LocalArtifactRepository):
        root = Path(repository.artifact_dir)
    else:
        try:
            root = Path(mlflow.artifacts.download_artifacts(spec, dst_path=str(scratch)))
        except MlflowException as exc:
            raise ModelSourceError(
                f"{setting}={spec!r}: not found in the MLflow registry at {mlflow.get_tracking_uri()}: {exc.message}"
            ) from None
    try:
        folder = model_folder(root / PYFUNC_MODEL if (root / PYFUNC_MODEL).is_dir() else root)
    except ModelSourceError as exc:  # files gone from the store, or a run's folder that holds no model
        raise ModelSourceError(f"{setting}={spec!r}: {exc}") from None
    tokenizer = root / "components" / "tokenizer"
    if (folder / "tokenizer.json").exists() or not tokenizer.is_dir():
        tokenizer = folder
    task = (Model.load(root).metadata or {}).get("task") if (root / "MLmodel").is_file() else None
    return RegisteredModel(folder, tokenizer, task)


def _from_registry(spec: str, scratch: Path, setting: str) -> Path:
    """A registered model as one folder, its tokenizer beside its weights, for `import_model` to copy
    (files read in place from the artifact store are copied out first: the store is never written to)."""
    download = scratch / "download"
    download.mkdir()
    found = registered_model(spec, download, setting)
    folder = scratch / "model"
    shutil.copytree(found.folder, folder)
    if found.tokenizer != found.folder:
        shutil.copytree(found.tokenizer, folder, dirs_exist_ok=True)
    return folder


def _from_hub(spec: str, scratch: Path, setting: str) -> Path:
    """Download (or read from the local hub cache) and save as a plain folder. Needs the network or
    a cached copy; under HF_HUB_OFFLINE=1 only the cache is tried."""
    from huggingface_hub import is_offline_mode
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(spec)
        tokenizer = AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        offline = " (offline mode: only the local hub cache was looked at)" if is_offline_mode() else ""
        raise ModelSourceError(
            f"{setting}={spec!r} is neither a local folder nor a registry URI (models:/name@alias), and the "
            f"Hugging Face hub gave no model by that id{offline}: {exc}"
        ) from None
    model.save_pretrained(scratch / "model")
    tokenizer.save_pretrained(scratch / "model")
    return scratch / "model"


def locate(spec: str, scratch: Path, setting: str) -> Path:
    """The transformers folder `spec` names; registry and hub models are downloaded into `scratch`.
    `setting` (e.g. `distill.teacher`) is how errors name where the reference came from."""
    if spec.startswith(REGISTRY_SCHEMES):
        return _from_registry(spec, scratch, setting)
    local = Path(spec).expanduser()
    if local.is_dir():
        return model_folder(local)
    if _looks_like_path(spec) or local.exists():
        raise ModelSourceError(f"{setting}={spec!r}: no such folder ({local.resolve()})")
    return _from_hub(spec, scratch, setting)


def import_model(folder: Path, runtime: Runtime, source: str) -> ArtifactRef:
    """Copy a transformers folder into the store as an artifact keyed by its files' content."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    key = stable_hash({str(p.relative_to(folder)): file_hash(p) for p in files})
    store = runtime.store
    existing = store.get(KIND, key)
    if existing is not None:
        return existing
    with store.write(KIND, key, step="import_model", config={"source": source}) as (tmp, _):
        shutil.copytree(folder, tmp / "model")
    return store.ref(KIND, key)


def resolve(spec: str | None, pipeline_model: ArtifactRef | None, runtime: Runtime, setting: str) -> ArtifactRef:
    """The model as an artifact holding `model/`: the pipeline's pretrained model when `spec` is None."""
    if spec is None:
        if pipeline_model is None:
            raise ModelSourceError(
                f"{setting} is null (the pipeline's pretrained model) but no pretrain stage ran: set {setting} to a "
                "registry URI (models:/smolforge-base@candidate), a folder or a hub id"
            )
        return pipeline_model
    with tempfile.TemporaryDirectory(prefix="smolforge-model-") as scratch:
        return import_model(locate(spec, Path(scratch), setting), runtime, spec)


def adapter_folders(folder: str | Path) -> dict[str, Path]:
    """The unmerged adapters a transformers folder carries (`ADAPTERS/<name>/`), by name, sorted."""
    root = model_folder(folder) / ADAPTERS
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / "adapter_config.json").is_file()}


def keep_logits_to_inputs(model: Any) -> Any:
    """Make a prompt-tuned model's logits line up with its input again; returns the model.

    peft's prompt tuning feeds the soft prompt in front of the input embeddings and returns the
    logits of those positions too, so position i of the output is no longer token i's: every caller
    that reads logits by the input's positions (the training loss, perplexity, lm-eval) would be
    off by `num_virtual_tokens`. A forward hook keeps the last input-length positions. Generation
    does not go through this forward (peft hands it the base's `generate`), and prefix tuning's
    prefixes live in the attention cache, so both are left as they are."""
    if not hasattr(model, "active_peft_config"):
        return model

    def trim(module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        if module.active_peft_config.peft_type != "PROMPT_TUNING":  # looked up per call: set_adapter may switch
            return output
        inputs = kwargs.get("input_ids", args[0] if args else None)
        if inputs is None:
            inputs = kwargs.get("inputs_embeds")
        if inputs is not None and getattr(output, "logits", None) is not None:
            output.logits = output.logits[:, -inputs.shape[1] :]
        return output

    model.register_forward_hook(trim, with_kwargs=True)
    return model


def load_causal_lm(folder: str | Path, adapter: str | None = None, **kwargs: Any) -> Any:
    """The model a folder holds, ready to run: a plain transformers model, or the base with its
    unmerged adapters (peft's multi-adapter model: the base's weights are loaded once, each adapter
    beside it, `set_adapter(name)` picks one). `adapter` names the active one (default: `default`,
    else the first); naming one the folder lacks is an error that lists what it has."""
    from transformers import AutoModelForCausalLM

    path = model_folder(folder)
    base = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    found = adapter_folders(path)
    if not found:
        if adapter is not None:
            raise ModelSourceError(f"adapter {adapter!r}: {path} carries no adapters (a merged or plain model)")
        return base
    return with_adapters(base, found, adapter, str(path))


def with_adapters(base: Any, adapters: dict[str, Path], active: str | None, where: str) -> Any:
    """`base` with every adapter of `adapters` loaded beside the others (peft `load_adapter`) and
    `active` (default: `default`, else the first) switched on."""
    from peft import PeftModel

    if active is None:
        active = DEFAULT_ADAPTER if DEFAULT_ADAPTER in adapters else next(iter(adapters))
    if active not in adapters:
        raise ModelSourceError(f"adapter {active!r}: {where} has adapters {sorted(adapters)}")
    (first, first_dir), *rest = adapters.items()
    model = PeftModel.from_pretrained(base, first_dir, adapter_name=first)
    for name, adapter_dir in rest:
        model.load_adapter(adapter_dir, adapter_name=name)
    model.set_adapter(active)
    return keep_logits_to_inputs(model.eval())
