"""The training algorithms, one entry each: the single source read by config validation, the objectives, the
pre-flight check and the Train page. No torch here: the app reads it without loading the ML stack.

An entry says what the algorithm is (name, title, a one-line explanation for a non-engineer), what it trains on
(its data kind and, in words, the labels that make it), what it needs at training time, which settings apply to
it, and its own cross-field checks (`problems(cfg)`, sentences). Formulas: docs/losses.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# What each data kind trains on (columns of data/train.parquet), and how a person makes such labels.
DATA_COLUMNS = {
    "sft": ("prompt", "completion"),
    "pairs": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),     # label: bool; pairs split into a good and a bad row
}
DATA_NEEDS = {
    "sft": "written ideal answers or answers labeled good",
    "pairs": "decided pairs (pick the better of two on the Label page)",
    "unpaired": "good/bad labels (or decided pairs, which count as one good and one bad answer)",
}


def kto_classes_problem(n_good: int, n_bad: int) -> str | None:
    """KTO's loss compares good and bad answers against one KL baseline: data with one class cannot train it."""
    if n_good and n_bad:
        return None
    return (f"KTO needs both good and bad examples; the data has only {'good' if n_good else 'bad'} ones "
            f"({max(n_good, n_bad)}). Label some of the other kind first.")


# Each algorithm's own cross-field checks: (its entry, a JobConfig) -> sentences.
def _no_checks(algo: "Algorithm", cfg: Any) -> list[str]:
    return []


def _eps_dpo_checks(algo: "Algorithm", cfg: Any) -> list[str]:
    return ["eps-DPO does not support label_smoothing."] if cfg.label_smoothing else []


def _mrpo_checks(algo: "Algorithm", cfg: Any) -> list[str]:
    from training.references import reference_problem

    if cfg.kind != "train":
        return []
    if len(cfg.references) < algo.min_references:
        return ["MRPO needs at least one extra reference (an earlier run's adapter)."]
    if cfg.mrpo_weights is not None and len(cfg.mrpo_weights) != len(cfg.references) + 1:
        return [f"mrpo_weights needs {len(cfg.references) + 1} values (the base reference first)."]
    if cfg.mrpo_weights is not None and not all(w > 0 for w in cfg.mrpo_weights):
        return [f"mrpo_weights must all be positive (got {list(cfg.mrpo_weights)}); they are normalised to sum to 1."]
    return [p for ref in cfg.references if (p := reference_problem(cfg.model, ref))][:1]


def _kto_checks(algo: "Algorithm", cfg: Any) -> list[str]:
    if cfg.kind == "train" and cfg.batch_size < algo.min_batch_size:
        return [f"KTO needs batch_size of at least {algo.min_batch_size} (its KL estimate pairs each prompt with "
                "another example's answer)."]
    return []


@dataclass(frozen=True)
class Algorithm:
    name: str                         # the config value: sft, minor_sft, dpo, minor_dpo, eps_dpo, mrpo, kto
    title: str                        # how people write it: "ε-DPO"
    explanation: str                  # one line for a non-engineer
    data_kind: str                    # sft | pairs | unpaired (see DATA_COLUMNS)
    settings: tuple[str, ...]         # JobConfig fields that change what it does (a page shows only these)
    needs_ref_logits: bool = False    # reference logits every step (else reference log-probs cached once)
    needs_kl_pairs: bool = False      # KTO's mismatched (prompt, other answer) pairs
    min_references: int = 0           # extra references beyond the base
    min_batch_size: int = 1
    checks: Callable[["Algorithm", Any], list[str]] = _no_checks   # its own cross-field checks on a JobConfig

    @property
    def needs(self) -> str:
        """The labels it trains on, in words."""
        return DATA_NEEDS[self.data_kind]

    def problems(self, cfg: Any) -> list[str]:
        """What is wrong with `cfg` (a JobConfig) for this algorithm, as sentences."""
        return self.checks(self, cfg)


_ALL = (
    Algorithm("sft", "SFT", "SFT: imitate the written / good answers.", "sft", ("sft_reduction",)),
    Algorithm("minor_sft", "MinorSFT",
              "MinorSFT: SFT that slows down on answers the model already prefers (stays closer to the base).",
              "sft", ("beta", "sft_reduction")),
    Algorithm("dpo", "DPO",
              "DPO: from pairs, make the chosen answer more likely than the rejected one, relative to the base.",
              "pairs", ("beta", "loss_type", "label_smoothing")),
    Algorithm("minor_dpo", "MinorDPO",
              "MinorDPO: DPO that stops pushing a rejected answer down once it is below the base's likelihood.",
              "pairs", ("beta",)),
    Algorithm("eps_dpo", "ε-DPO", "ε-DPO: DPO whose β adapts per example and over training (watch the β trajectory).",
              "pairs", ("beta", "epsilon"), needs_ref_logits=True, checks=_eps_dpo_checks),
    Algorithm("mrpo", "MRPO", "MRPO: DPO against several references at once (the base plus earlier runs of the "
              "same base model). With 3 or more references the adaptive weights extend the paper's 2-reference rule.",
              "pairs", ("beta", "eta", "mrpo_weights", "references"), min_references=1, checks=_mrpo_checks),
    Algorithm("kto", "KTO", "KTO: from single good/bad labels; no pairs needed.", "unpaired",
              ("beta", "desirable_weight", "undesirable_weight"), needs_kl_pairs=True, min_batch_size=2,
              checks=_kto_checks),
)
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in _ALL}
NAMES = tuple(ALGORITHMS)


def get(name: str) -> Algorithm:
    """The algorithm called `name`; a ValueError with a plain sentence for an unknown name."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"algorithm must be one of {', '.join(NAMES)}, not {name!r}.") from None
