"""The HH-RLHF harmless-base test split that tests and benchmarks read (origin, licence and checksum in
bench/data/README.md; it holds offensive red-team content)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd

from labeling.importer import split_shared_prefix

HH = Path(__file__).resolve().parent / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def hh_pairs(path: Path = HH) -> pd.DataFrame:
    """All usable HH pairs in file order: prompt (the shared dialogue), chosen, rejected."""
    rows = []
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            try:
                d = json.loads(line)
                prompt, chosen, rejected = split_shared_prefix(d["chosen"], d["rejected"])
            except (ValueError, KeyError, TypeError):
                continue
            if prompt and chosen and rejected and chosen != rejected:
                rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "example_id": f"hh{i}"})
    return pd.DataFrame(rows)
