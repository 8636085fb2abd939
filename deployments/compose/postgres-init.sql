-- One database per service on the team stack's PostgreSQL. The postgres image runs this once, when
-- its data volume is empty; the databases belong to POSTGRES_USER, the user every service logs in as.
CREATE DATABASE prefect;  -- Prefect's server (flow runs, deployments, work pools)
CREATE DATABASE mlflow;   -- MLflow's tracking store and model registry
CREATE DATABASE optuna;   -- sweep studies: sweep.storage=postgresql://USER:PASSWORD@postgres:5432/optuna
