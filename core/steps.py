"""Turn a plain function that fills a folder into a cached Prefect task that returns an ArtifactRef.

The function is written as `fn(out, *, ...params) -> metrics` and stays callable without Prefect
(tests call `.fn`). Its artifact key is `recipe_key(code, params)`, where an input artifact counts
by its key and `Runtime` (where things live, how many workers) does not count at all. Prefect's
cache key is the same key, so a finished step shows as Cached in the UI; when the artifact behind
a key has gone missing or fails its hashes, the stale Prefect record is deleted first so the task
really runs again.

A step that can be interrupted and resumed (training) also declares `workdir`: a folder kept per
key outside the artifact, created before the step runs, where it leaves checkpoints a re-run picks up.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from smolforge.artifacts import ArtifactRef, code_version, recipe_key, storage_options
from smolforge.environment import artifacts_location, is_remote, project_home, results_block_name
from smolforge.runtime import Runtime


def jsonable(value: Any) -> Any:
    """The part of a parameter that defines the result: refs by kind and key, models by fields."""
    if isinstance(value, ArtifactRef):
        return {"artifact": value.kind, "key": value.key}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _input_refs(params: dict[str, Any]) -> list[ArtifactRef]:
    refs: list[ArtifactRef] = []
    for value in params.values():
        items = value if isinstance(value, (list, tuple)) else value.values() if isinstance(value, dict) else [value]
        refs.extend(v for v in items if isinstance(v, ArtifactRef))
    return refs


def _split(params: dict[str, Any]) -> tuple[Runtime, dict[str, Any]]:
    runtimes = [v for v in params.values() if isinstance(v, Runtime)]
    if len(runtimes) != 1:
        raise TypeError("an artifact step takes exactly one Runtime parameter")
    return runtimes[0], {k: v for k, v in params.items() if not isinstance(v, Runtime)}


def _drop_result(key: str) -> None:
    """Delete Prefect's record of a step whose artifact is gone, so the step really runs again: in
    Prefect's local folder, or beside a remote artifact store (`environment.configure` makes that
    Prefect's default result storage)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, get_current_settings

    if get_current_settings().results.default_storage_block is None:
        stale = Path(PREFECT_LOCAL_STORAGE_PATH.value()) / key
        if stale.exists():
            os.remove(stale)
        return
    from prefect.results import get_default_result_storage

    storage = get_default_result_storage()
    path = f"{storage.basepath.rstrip('/')}/{key}"
    if storage.filesystem.exists(path):
        storage.filesystem.rm(path)


def save_result_storage() -> None:
    """Save the Prefect block that `environment.configure` names as the default result storage when
    the artifact store is remote (Prefect loads it by name when a flow run starts, so it must exist
    first); nothing to do otherwise. Saving again with the same URL changes nothing."""
    url = artifacts_location(project_home())
    if not is_remote(url):
        return
    from prefect.filesystems import RemoteFileSystem

    url = url.rstrip("/")
    block = RemoteFileSystem(basepath=f"{url}/prefect-results", settings=storage_options(url))
    block.save(results_block_name(url), overwrite=True)


def artifact_step(kind: str, *, code: tuple[str | Path, ...] = (), **task_options: Any) -> Callable:
    """Decorator: `kind` names the artifact folder; `code` lists more source files the step's result
    depends on (the module that does the work), so editing them invalidates the cache."""

    def decorate(fn: Callable[..., dict[str, Any] | None]) -> Any:
        from prefect import task

        step = fn.__name__
        code_hash = code_version(inspect.getsourcefile(fn), *code)
        signature = inspect.signature(fn)
        # `out` (first) and an optional `workdir` are supplied here, not by callers
        wants_workdir = "workdir" in signature.parameters
        public = signature.replace(
            parameters=[p for p in list(signature.parameters.values())[1:] if p.name != "workdir"]
        )

        def key_of(params: dict[str, Any]) -> str:
            _, defining = _split(params)
            return recipe_key(step, code_hash, jsonable(defining), [])

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> ArtifactRef:
            bound = public.bind(*args, **kwargs)
            bound.apply_defaults()
            params = dict(bound.arguments)
            runtime, defining = _split(params)
            store = runtime.store
            key = key_of(params)
            existing = store.get(kind, key)
            if existing is not None:
                return existing
            extra = {}
            if wants_workdir:
                # Made here, once for every way a step runs: the one-process stage used to get it as a
                # side effect of its first checkpoint, while torchrun's launcher writes its spec into
                # it before any checkpoint exists (and failed on a fresh project folder).
                workdir = store.root / ".work" / kind / key
                workdir.mkdir(parents=True, exist_ok=True)
                extra["workdir"] = workdir
            with store.write(kind, key, step=step, inputs=_input_refs(params), config=jsonable(defining)) as (tmp, metrics):
                metrics.update(fn(tmp, **params, **extra) or {})
            return store.ref(kind, key)

        run.__signature__ = public  # type: ignore[attr-defined]

        def cache_key(_context: Any, params: dict[str, Any]) -> str:
            runtime, _ = _split(params)
            key = key_of(params)
            prefect_key = f"{kind}-{key}"
            if runtime.store.problem(kind, key) is not None:
                _drop_result(prefect_key)
            return prefect_key

        options = {"persist_result": True, "cache_key_fn": cache_key, "name": step, **task_options}
        prefect_task = task(**options)(run)
        def existing(*args: Any, **kwargs: Any) -> ArtifactRef | None:
            """The artifact these arguments would make, when it is already complete in the store:
            a flow asks first, to tell a cached stage from one that will train."""
            bound = public.bind(*args, **kwargs)
            bound.apply_defaults()
            runtime, _ = _split(dict(bound.arguments))
            return runtime.store.get(kind, key_of(dict(bound.arguments)))

        prefect_task.key_of = key_of  # type: ignore[attr-defined]
        prefect_task.existing = existing  # type: ignore[attr-defined]
        prefect_task.kind = kind  # type: ignore[attr-defined]
        return prefect_task

    return decorate
