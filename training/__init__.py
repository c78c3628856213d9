"""Training jobs: the algorithm registry (algorithms.py), pure losses and the objectives built on them, batching,
model loading, the trainer loop, the generate and evaluate jobs, model export and federated rounds; runtime.py
holds what every job process shares (status, heartbeat, errors as sentences, seeding). Run as
`python -m training RUN_DIR`. Imports neither the app, the label store nor the database: a job knows only its run
directory (storage/rundir.py)."""
