"""What `smolforge deploy` puts on the server: one deployment per flow of the composition.

Each deployment's only parameter that matters is the pydantic `PipelineConfig`, so the Prefect UI
renders a form with every setting's description, filled with the tiny preset's values. Training
stages serve the GPU pool and carry the `gpu` tag (their runs hold a slot of the global `gpu`
limit); everything else serves the CPU pool. The retrain flow carries two cron schedules, both
switched off until a user switches one on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect.schedules import Cron, Schedule

from smolforge.flows.config import DEFAULT_PRESET, RETRAIN, STAGES, Stage, load_config
from smolforge.flows.routing import DEPLOYMENT, GPU, as_parameter

CPU_POOL = "cpu"
GPU_POOL = "gpu"
PIPELINE = Stage("pipeline", "smolforge.flows.pipeline:pipeline")
# Weekly is the cadence teams retrain at; daily is there to switch on instead. Both start off: a
# schedule that retrains by surprise on a shared GPU is worse than one a user turns on.
RETRAIN_SCHEDULES = (
    ("weekly", "0 3 * * 1", "Mondays 03:00 UTC"),
    ("daily", "0 3 * * *", "every day 03:00 UTC"),
)


@dataclass
class DeploymentSpec:
    stage: Stage  # its name is the Prefect flow's: the deployment is `name/smolforge`
    pool: str
    tags: list[str] = field(default_factory=list)
    schedules: list[Schedule] = field(default_factory=list)

    @property
    def flow_name(self) -> str:
        return self.stage.name

    @property
    def entrypoint(self) -> str:  # module:function, importable wherever the project is installed
        return self.stage.flow

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{DEPLOYMENT}"

    def flow(self):
        return self.stage.load()


def specs(gpu_pool: str = GPU_POOL, cpu_pool: str = CPU_POOL) -> list[DeploymentSpec]:
    """One spec per flow: the pipeline, every stage, and retraining (with its schedules)."""
    out = []
    for stage in (PIPELINE, *STAGES, RETRAIN):
        spec = DeploymentSpec(
            stage=stage,
            pool=gpu_pool if stage.gpu else cpu_pool, tags=["smolforge", *([GPU] if stage.gpu else [])],
        )
        if stage is RETRAIN:
            spec.schedules = [
                Cron(cron, timezone="UTC", active=False, slug=slug) for slug, cron, _ in RETRAIN_SCHEDULES
            ]
        out.append(spec)
    return out


def default_parameters() -> dict[str, Any]:
    """The form's defaults: the tiny preset, complete (Prefect replaces a nested parameter
    wholesale, so a partial default would drop every setting it leaves out)."""
    return {"config": as_parameter(load_config(DEFAULT_PRESET))}
