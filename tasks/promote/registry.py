"""What the gate reads from the MLflow registry and what it writes there.

A version's evaluation is found through the tags the evaluate stage sets on it: `eval.model_run_id`
(the `evaluate-model` run, whose metrics are read at full precision) and `eval.data_key` (the
held-out data it was scored on). Every lookup that can fail raises `PromotionError` naming the value
and what exists instead, before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from smolforge import tracking
from smolforge.tasks.promote.gate import PromotionError

CHAMPION, PREVIOUS, CANDIDATE = "champion", "previous-champion", "candidate"
LOCK_SUFFIX = ".promotion-lock"


@dataclass(frozen=True)
class Evaluation:
    """A registry version's evaluation: every metric its evaluation run logged, and the data key."""

    name: str
    version: str
    metrics: dict[str, float]
    data_key: str | None
    run_id: str


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def aliases(name: str) -> dict[str, str]:
    """`{alias: version}` of a registered model; refuses a name that is not registered."""
    from mlflow.exceptions import MlflowException

    client = tracking.client()
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        known = sorted(m.name for m in client.search_registered_models())
        raise PromotionError(f"no registered model {name!r}; registered: {', '.join(known) or 'none'}") from None
    return {alias: str(version) for alias, version in model.aliases.items()}


def alias_version(name: str, alias: str) -> str | None:
    return aliases(name).get(alias)


def require_alias(name: str, alias: str) -> str:
    version = alias_version(name, alias)
    if version is None:
        raise PromotionError(f"{name} has no alias {alias!r}; its aliases: {_alias_list(name)}")
    return version


def _alias_list(name: str) -> str:
    return ", ".join(f"{a} -> {v}" for a, v in sorted(aliases(name).items())) or "none"


def version_tags(name: str, version: str) -> dict[str, str]:
    """The tags of an existing version; refuses a version that does not exist."""
    from mlflow.exceptions import MlflowException

    aliases(name)  # the name first, so its error comes before the version's
    client = tracking.client()
    try:
        return dict(client.get_model_version(name, str(version)).tags)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        versions = sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")), key=int)
        raise PromotionError(f"{name} has no version {version!r}; its versions: {', '.join(versions) or 'none'}") from None


def evaluation(name: str, version: str) -> Evaluation | None:
    """The version's evaluation, or None when the evaluate stage never tagged it."""
    tags = version_tags(name, version)
    run_id = tags.get("eval.model_run_id")
    if not run_id:
        return None
    metrics = tracking.client().get_run(run_id).data.metrics
    return Evaluation(
        name=name, version=str(version), run_id=run_id, data_key=tags.get("eval.data_key"),
        metrics={k: v for k, v in metrics.items() if not k.startswith("seconds.")},
    )


def require_evaluation(name: str, version: str) -> Evaluation:
    found = evaluation(name, version)
    if found is None:
        raise PromotionError(
            f"{name} version {version} has no evaluation (no eval.model_run_id tag): evaluate it first, e.g. "
            f"--set 'evaluate.models=[\"models:/{name}/{version}\"]'; a version is never promoted without one"
        )
    return found


def set_alias(name: str, alias: str, version: str | None) -> None:
    """Point `alias` at `version`, or remove it when `version` is None."""
    client = tracking.client()
    if version is None:
        if alias in aliases(name):
            client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, str(version))


def tag_version(name: str, version: str, tags: dict[str, object]) -> None:
    """Set `tags` on a version; dicts are written as JSON so the registry page shows them whole."""
    client = tracking.client()
    for key, value in tags.items():
        text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
        client.set_model_version_tag(name, str(version), key, text)


def overview() -> list[dict[str, object]]:
    """Every registered model's versions that hold an alias (the newest version when none does):
    `{name, version, aliases, metrics (the eval.<metric> tags), promotion}`."""
    client = tracking.client()
    rows = []
    for model in sorted(client.search_registered_models(), key=lambda m: m.name):
        by_version: dict[str, list[str]] = {}
        for alias, version in model.aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        if not by_version:
            versions = client.search_model_versions(f"name='{model.name}'")
            if versions:
                by_version[str(max(int(v.version) for v in versions))] = []
        for version in sorted(by_version, key=int, reverse=True):
            tags = client.get_model_version(model.name, version).tags
            metrics = {
                k.removeprefix("eval."): v for k, v in tags.items()
                if k.startswith("eval.") and k not in ("eval.run_id", "eval.model_run_id", "eval.data_key")
            }
            rows.append({
                "name": model.name, "version": version, "aliases": sorted(by_version[version]), "metrics": metrics,
                "promotion": tags.get("promotion", ""),
            })
    return rows


@contextlib.contextmanager
def promotion_lock(name: str, wait_seconds: float = 120.0, stale_seconds: float = 600.0) -> Iterator[None]:
    """Hold `name`'s promotion lock: a registered model named `<name>.promotion-lock`, which the
    registry's store creates at most once (its name is unique), so two promotions of one model on
    two machines sharing one MLflow server take turns. A lock older than `stale_seconds` (its
    holder died) is broken; waiting longer than `wait_seconds` is an error naming the holder."""
    from mlflow.exceptions import MlflowException

    client = tracking.client()
    lock, holder = f"{name}{LOCK_SUFFIX}", f"{socket.gethostname()}:{os.getpid()}"
    started = time.time()
    while True:
        try:
            client.create_registered_model(lock, tags={"smolforge.lock.holder": holder, "smolforge.lock.since": str(time.time())})
            break
        except MlflowException as exc:
            code = getattr(exc, "error_code", "")
            if code == "RESOURCE_DOES_NOT_EXIST":
                continue  # the store found the name taken, then its holder released it: try again at once
            if code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            tags = client.get_registered_model(lock).tags
        except MlflowException:
            continue  # released in between: try again at once
        since = float(tags.get("smolforge.lock.since", time.time()))
        if time.time() - since > stale_seconds:
            with contextlib.suppress(MlflowException):
                client.delete_registered_model(lock)
            continue
        if time.time() - started > wait_seconds:
            raise PromotionError(
                f"another promotion of {name} holds its lock ({lock}, held by {tags.get('smolforge.lock.holder')} for "
                f"{time.time() - since:.0f} s); try again when it ends"
            )
        time.sleep(0.1)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(lock)
