"""`smolforge submit`: a run of a flow's deployment with the whole config as its parameter.

Prefect merges a run's parameters with the deployment's defaults only at the top level, so a form
(or `prefect deployment run --params`) given part of a nested config drops every setting it leaves
out. Submitting the config built here (preset, file, `--set` overrides, validated) sends them all.
"""

from __future__ import annotations

import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from smolforge.deployments.apply import ServerError
from smolforge.flows.routing import as_parameter, deployment_name


class SubmittedRun(FlowRun):
    url: str = ""


def submit_run(flow: str, config, url: str) -> SubmittedRun:
    """A run of `flow`'s deployment on the server at `url` (checked by `server_url`)."""
    name = deployment_name(flow)
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise ServerError(f"no deployment {name} on {url}: run `smolforge deploy` first") from None
    run = run_deployment(name, parameters={"config": as_parameter(config)}, timeout=0)
    ui = url.removesuffix("/").removesuffix("/api")
    return SubmittedRun(**run.model_dump(), url=f"{ui}/runs/flow-run/{run.id}")


def wait_for(run_id: UUID, poll: float = 2.0) -> State:
    """The run's final state, polled from the server."""
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(run_id).state
            if state is not None and state.is_final():
                return state
            time.sleep(poll)
