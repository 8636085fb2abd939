"""Running the flows as a service: one deployment per flow on the `cpu` or `gpu` work pool, the
workers that execute them, and the team stack on one machine (`smolforge up` / `smolforge down`).

The deployments are derived from the composition's flow list (`flows.config.FLOWS`), so a new stage
gets its deployment without anyone writing one; this is the project's equivalent of a `prefect.yaml`.
"""
