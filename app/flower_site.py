"""A site's side of federated training across machines: the Flower ClientApp its SuperNode runs (named in
training/federated/flower-app/pyproject.toml). It reads the site's own labels here, beside its Preflab, and hands
training plain rows (training/federated/flower.py's `site_round`); no row leaves the site.

Node config keys (flower-supernode --node-config "site='plant-a' db='/srv/preflab/data/preflab.duckdb'"):
site (its name), db (its Preflab database) or data (a Parquet of training rows it exported), and optionally
model (where this site keeps the base model) and workdir.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from training.federated.flower import site_round

client_app = ClientApp()


def site_rows(node_config: dict, data_kind: str) -> pd.DataFrame:
    """The site's training rows: from its Preflab database (`db`, opened read-only, with the same majority rule as
    the app's snapshots), or from a Parquet the site exported (`data`)."""
    if node_config.get("data"):
        return pd.read_parquet(str(node_config["data"]))
    if not node_config.get("db"):
        raise ValueError("This SuperNode has no data: start it with --node-config \"site='NAME' db='PATH'\" "
                         "(its Preflab database) or data='PATH' (a Parquet of training rows).")
    from labeling.dataset import training_rows
    from storage.db import Database, DatabaseInUse, pending_migrations

    path = Path(str(node_config["db"]))
    if not path.exists():
        raise FileNotFoundError(f"No Preflab database at {path} (node config db).")
    try:
        db = Database(path, read_only=True)
    except DatabaseInUse:
        raise RuntimeError(f"{path} is in use by the Preflab app. Stop the app for the first round, or export "
                           "the labels (Data page, Parquet) and give the file as node config data=.") from None
    try:
        if pending_migrations(db):
            raise RuntimeError(f"{path} was written by an older Preflab: start this site's Preflab once (it updates "
                               "the database), stop it, then start the SuperNode again.")
        return training_rows(db, data_kind)
    finally:
        db.close()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """One round at this site, on this site's rows."""
    return site_round(msg, context, site_rows)
