"""Who holds which rows. Sites come from the `site` column. Settings from the paper:
- KTO-O: each site keeps its own labels (pairs become a good and a bad row at the same site);
- KTO-R: the unpaired rows are permuted across sites with a seed, each site keeping its number of rows, so a
  prompt's good and bad answers usually end up at different sites (DPO cannot be trained there; KTO can);
- Dirichlet(alpha): an experimental non-IID re-split of rows over n sites by label.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from training.data import pairs_to_unpaired


def by_site(df: pd.DataFrame, site_column: str = "site") -> dict[str, pd.DataFrame]:
    if site_column not in df.columns or df[site_column].isna().all():
        raise ValueError("Federated training needs a site for every row, and this data has no site column.")
    if df[site_column].isna().any():
        raise ValueError(f"{int(df[site_column].isna().sum())} row(s) have no site; give every row a site.")
    return {str(s): g.reset_index(drop=True) for s, g in df.groupby(site_column, sort=True)}


def to_unpaired(df: pd.DataFrame) -> pd.DataFrame:
    return pairs_to_unpaired(df) if "label" not in df.columns and {"chosen", "rejected"} <= set(df.columns) else df


def kto_r(df: pd.DataFrame, seed: int, site_column: str = "site") -> pd.DataFrame:
    """Permute unpaired rows across sites: the rows' site labels are shuffled, so every site keeps its size."""
    df = to_unpaired(df).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(df))
    out = df.iloc[perm].reset_index(drop=True)
    out[site_column] = df[site_column].to_numpy()      # site sizes unchanged, contents redistributed
    return out


def dirichlet(df: pd.DataFrame, n_sites: int, alpha: float, seed: int, label_column: str = "label") -> pd.DataFrame:
    """Re-split rows over n_sites with per-label Dirichlet(alpha) proportions (small alpha = very non-IID)."""
    rng = np.random.default_rng(seed)
    df = df.reset_index(drop=True).copy()
    sites = np.empty(len(df), dtype=object)
    labels = df[label_column] if label_column in df else pd.Series(0, index=df.index)
    for _, idx in df.groupby(labels).groups.items():
        idx = rng.permutation(np.asarray(idx))
        props = rng.dirichlet([alpha] * n_sites)
        cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
        for k, part in enumerate(np.split(idx, cuts)):
            sites[part] = f"site-{k}"
    df["site"] = sites
    return df


def site_kto_weights(df: pd.DataFrame) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) for one site: lambda_D = n_U / n_D of its own data, lambda_U = 1."""
    n_d = int(df["label"].astype(bool).sum())
    n_u = len(df) - n_d
    if n_d == 0 or n_u == 0:
        return 1.0, 1.0     # a one-class site: KTO's loss still applies to the class it has
    return n_u / n_d, 1.0


def summary(df: pd.DataFrame, site_column: str = "site") -> pd.DataFrame:
    """Per site: rows, good/bad (unpaired) or pairs, so the non-IID split is visible before training."""
    rows = []
    for site, g in df.groupby(site_column):
        r = {"site": site, "rows": len(g)}
        if "label" in g:
            r.update(good=int(g["label"].astype(bool).sum()), bad=int((~g["label"].astype(bool)).sum()))
        if "chosen" in g:
            r["pairs"] = len(g)
        rows.append(r)
    return pd.DataFrame(rows)
