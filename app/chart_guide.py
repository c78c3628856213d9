"""The Runs page's charts, which algorithms each applies to, and what each chart and term means in one sentence
for a domain expert; the smoothing (EMA) any line chart can be drawn with; the overfitting warning. A new chart
is one PANELS entry here (its drawing lives in app/charts.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import plotly.graph_objects as go

from app import charts
from app.curves import ema
from training.algorithms import ALGORITHMS

PAIRS = tuple(a.name for a in ALGORITHMS.values() if a.data_kind == "pairs")   # they log reward accuracy on pairs
PREFERENCE = PAIRS + tuple(a.name for a in ALGORITHMS.values() if a.data_kind == "unpaired")  # an implicit reward


@dataclass(frozen=True)
class Panel:
    key: str
    explanation: str                                   # one sentence under the chart
    draw: Callable[..., go.Figure]                     # (db, run_id) -> figure
    algorithms: tuple[str, ...] | None = None          # None: every algorithm

    def applies(self, algorithm: str | None) -> bool:
        return self.algorithms is None or algorithm in self.algorithms


PANELS = (
    Panel("loss", "What training minimises: it should fall, then level off; jumps or a rise mean the learning "
          "rate is too high.", lambda db, r: charts.loss_chart(db, [r])),
    Panel("rewards", "Implicit reward = β × how much more likely the model makes an answer than the base did: "
          "chosen/good answers should rise above rejected/bad ones; the margin is the gap.",
          lambda db, r: charts.rewards_chart(db, [r]), PREFERENCE),
    Panel("logps", "How likely the model finds the labeled answers (log-probability; closer to 0 = more likely). "
          "If preferred answers fall too, the model is pushing answers apart by making everything less likely.",
          lambda db, r: charts.logps_chart(db, [r])),
    Panel("accuracy", "Share of training pairs where the chosen answer has the higher implicit reward; 1.0 early "
          "in a long run means the model has memorised these pairs.",
          lambda db, r: charts.accuracy_chart(db, [r]), PAIRS),
    Panel("kl", "How far the model has moved from the base: m_θ is the average per-token change in log-probability "
          "(0 = unchanged); KTO's z₀ is its running estimate of the same drift, which rewards are measured against.",
          lambda db, r: charts.kl_chart(db, [r])),
    Panel("beta", "ε-DPO's β (how strongly it holds the model near the base) over steps, and the share of pairs "
          "whose own β was loosened, tightened or kept.", lambda db, r: charts.beta_chart(db, r), ("eps_dpo",)),
    Panel("m_theta_bands", "The spread of m_θ over training examples per step: the middle half (dark) and 80% "
          "(light) of examples, chosen/good in green, rejected/bad in red.",
          lambda db, r: charts.m_theta_bands(db, r)),
    Panel("m_theta_hist", "m_θ of every example at the latest step: a long tail means a few examples moved the "
          "model much more than the rest (see the table below).", lambda db, r: charts.m_theta_histogram(db, r)),
    Panel("minor_coef", "MinorSFT's per-example weight: near 1 the example trains like plain SFT, near 0 the model "
          "already prefers it and it is slowed down.", lambda db, r: charts.minor_coef_chart(db, r), ("minor_sft",)),
    Panel("per_site", "Loss and m_θ per site of the data: a site whose curve stays apart is learned less (or more) "
          "than the others.", lambda db, r: charts.per_site_chart(db, r)),
    Panel("heldout", "The same drift m_θ and the accuracy on held-out examples the run never trains on, every few "
          "steps: if training accuracy rises while this stays flat, the model is memorising.",
          lambda db, r: charts.heldout_chart(db, r)),
    Panel("beta_tilde", "ε-DPO's own β for each pair (β̃) at every step: the middle of the pairs and their spread; "
          "pairs whose β̃ sits apart are ones the model finds unusually easy or hard.",
          lambda db, r: charts.beta_tilde_bands(db, r), ("eps_dpo",)),
    Panel("mrpo", "How much MRPO trusts each reference model (the weights add up to 1) and the share of the extra "
          "references' scores that were cut back towards the base model's.",
          lambda db, r: charts.mrpo_chart(db, r), ("mrpo",)),
    Panel("kto_kl", "KTO's drift estimate z₀ as used (never below 0) and before that floor: a raw estimate often "
          "below 0 means the floor is doing the work.", lambda db, r: charts.kto_kl_chart(db, r), ("kto",)),
)

# The words on the Runs and Train pages, one sentence each.
GLOSSARY = {
    "β (beta)": "How strongly training holds the model close to the base model: larger is more conservative "
                "(default 0.1).",
    "m_θ": "Per-token change in an answer's log-probability since the base model: 0 = unchanged, positive = the "
           "model now finds the answer more likely.",
    "implicit reward": "β × the change in an answer's log-probability since the base: the score DPO and KTO raise "
                       "for preferred answers and lower for the others.",
    "reward accuracy": "The share of pairs whose chosen answer has the higher implicit reward.",
    "z₀ (KTO)": "KTO's running estimate of how far the model has drifted from the base; a good answer must beat it, "
                "a bad one fall below it.",
    "λ good / λ bad (KTO)": "Weights of good and bad examples; set so that the rarer kind counts as much as the "
                            "common one.",
    "likelihood displacement": "Both the preferred and the rejected answers becoming less likely during training: "
                               "the pair is pushed apart by lowering both, which can make answers worse.",
    "LoRA rank": "How many directions the small adapter may change each layer in: 8 suits style and format; more "
                 "learns more and needs more memory.",
    "pass over the data": "Training on every selected example once; many passes over few labels lead to memorising.",
    "EMA (smoothed)": "An exponential moving average: each point blends the new value with the recent ones, so the "
                      "trend shows through step-to-step noise.",
}


def glossary_markdown() -> str:
    return "\n".join(f"- **{term}**: {text}" for term, text in GLOSSARY.items())


def smoothed(fig: go.Figure, weight: float = 0.8) -> go.Figure:
    """Every line of the chart as its EMA, with the raw values kept as faint points behind it (bands, bars and
    histograms are left as they are)."""
    palette = fig.layout.colorway or charts._LAYOUT.colorway
    for i, trace in enumerate(list(fig.data)):
        if trace.type != "scatter" or trace.fill or "lines" not in (trace.mode or "lines") or trace.y is None:
            continue
        color = trace.line.color or palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=trace.x, y=ema(list(trace.y), weight), mode="lines", name=f"{trace.name} (EMA)",
                                 line=dict(color=color, dash=trace.line.dash), yaxis=trace.yaxis))
        trace.update(mode="markers", opacity=0.3, showlegend=False, marker=dict(size=4, color=color))
    return fig


def overfitting_warning(accuracy: list[tuple[int, float]], steps_per_pass: float, total_steps: int) -> str | None:
    """A sentence when the training pairs are all ranked right early (reward accuracy 1.0 for 3 logged steps in a
    row, well before the end) and the run goes over the data more than 3 times: it is memorising them."""
    if steps_per_pass <= 0 or total_steps / steps_per_pass <= 3:
        return None
    run, since = 0, None
    for step, value in sorted(accuracy):
        run, since = (run + 1, since or step) if value >= 0.999 else (0, None)
        if run == 3 and step < 0.5 * total_steps:
            return (f"Possible overfitting: every training pair has been ranked right since step {since} "
                    f"({since / steps_per_pass:.1f} passes over the data), and the run goes over the data "
                    f"{total_steps / steps_per_pass:.0f} times. The model is likely memorising these labels; trust "
                    "the held-out figures, and use fewer steps or more labels next time.")
    return None
