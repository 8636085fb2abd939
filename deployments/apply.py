"""`smolforge deploy`: work pools, the `gpu` concurrency limit and one deployment per flow, created
or brought up to date on the Prefect server the environment points at.

Running it twice changes nothing a user set: a schedule someone switched on stays on, a pool's
own settings (its concurrency limit, a paused pool) stay as they are.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.request
from dataclasses import dataclass

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
from prefect.deployments.runner import DeploymentApplyError
from prefect.exceptions import ObjectNotFound
from prefect.types.entrypoint import EntrypointType

from smolforge.deployments.catalog import CPU_POOL, GPU_POOL, DeploymentSpec, default_parameters, specs
from smolforge.errors import ConfigError
from smolforge.flows.routing import DEPLOYMENT, GPU


class ServerError(ConfigError):
    """No Prefect server to deploy to, or one that does not answer."""


def server_url() -> str:
    """The Prefect API the environment points at, checked to answer; a clear error otherwise."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise ServerError(
            "no Prefect server: PREFECT_API_URL is not set and no `smolforge up` stack runs in this project folder; "
            "start one with `smolforge up` (or point PREFECT_API_URL at your team's server, e.g. http://host:4200/api)"
        )
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5) as response:
            if response.status == 200:
                return url
    except OSError as exc:
        raise ServerError(f"no Prefect server answers at PREFECT_API_URL={url} ({exc}); start it with `smolforge up`") from None
    raise ServerError(f"the Prefect server at {url} is not healthy; see its logs")


@dataclass
class Change:
    what: str  # "pool cpu", "limit gpu", "deployment pipeline/smolforge"
    action: str  # created | updated | unchanged
    detail: str = ""


def deploy(gpu_pool: str = GPU_POOL, cpu_pool: str = CPU_POOL, gpus: int = 1) -> list[Change]:
    """Create what is missing, update the deployments, and say what happened to each (on the
    server `server_url` checked)."""
    changes = _pools(cpu_pool, gpu_pool) + [_gpu_limit(gpus)]
    parameters = default_parameters()
    for spec in specs(gpu_pool, cpu_pool):
        changes.append(_deployment(spec, parameters))
    return changes


def _pools(*names: str) -> list[Change]:
    out = []
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_work_pool(name)
                out.append(Change(f"pool {name}", "unchanged"))
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
                out.append(Change(f"pool {name}", "created", "process worker pool"))
    return out


def _gpu_limit(gpus: int) -> Change:
    """The global concurrency limit every GPU stage's run holds a slot of: one per team GPU."""
    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(GPU)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU, limit=gpus))
            return Change(f"limit {GPU}", "created", f"{gpus} slot(s)")
    return Change(f"limit {GPU}", "unchanged", f"{found.limit} slot(s)")


def _deployment(spec: DeploymentSpec, parameters: dict) -> Change:
    """Create or update one deployment; leave it alone when nothing would change. An existing
    schedule keeps the on/off state it has on the server: a user switches the retrain schedule on
    in the UI, and deploying again must not undo it."""
    flow = spec.flow()
    if flow.name != spec.flow_name:
        raise RuntimeError(f"{spec.entrypoint} is flow {flow.name!r}, the composition names it {spec.flow_name!r}")
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_deployment_by_name(spec.full_name)
        except ObjectNotFound:
            existing = None
    active = {s.slug: s.active for s in existing.schedules if s.slug} if existing is not None else {}
    schedules = [dataclasses.replace(s, active=active.get(s.slug, s.active)) for s in spec.schedules]
    deployment = flow.to_deployment(
        name=DEPLOYMENT,
        parameters=parameters,
        tags=spec.tags,
        schedules=schedules or None,
        work_pool_name=spec.pool,
        entrypoint_type=EntrypointType.MODULE_PATH,
        description=(flow.description or "").strip().split("\n\n")[0].replace("\n", " ") or None,
    )
    if existing is not None and _same(existing, deployment, spec):
        return Change(f"deployment {spec.full_name}", "unchanged", f"pool {spec.pool}")
    try:
        deployment.apply(work_pool_name=spec.pool)
    except DeploymentApplyError as exc:
        raise ServerError(f"the server refused deployment {spec.full_name}: {str(exc)[:400]}") from None
    if existing is None:
        return Change(f"deployment {spec.full_name}", "created", f"pool {spec.pool}")
    moved = existing.work_pool_name != spec.pool
    return Change(
        f"deployment {spec.full_name}", "updated",
        f"pool {existing.work_pool_name} -> {spec.pool}" if moved else f"pool {spec.pool}",
    )


def _same(existing, deployment, spec: DeploymentSpec) -> bool:
    """Whether the server already holds this deployment as `deployment` would write it."""
    return (
        existing.work_pool_name == spec.pool
        and existing.entrypoint == deployment.entrypoint
        and existing.parameters == deployment.parameters
        and sorted(existing.tags) == sorted(spec.tags)
        and existing.description == deployment.description
        and existing.parameter_openapi_schema == deployment._parameter_openapi_schema.model_dump(exclude_unset=True)
        and sorted(s.slug for s in existing.schedules if s.slug) == sorted(s.slug for s in spec.schedules)
    )
