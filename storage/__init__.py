"""Storage: the DuckDB schema, its migrations and queries (db.py, migrations.py), and the run-directory
contract (rundir.py) shared by the app and training jobs. Importing this package opens nothing."""
