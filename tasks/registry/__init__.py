"""The MLflow model registry: registering what a stage trained, with its lineage."""
