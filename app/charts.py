"""Charts for the Runs and Compare pages, each a SQL query over run_scalars / run_instances drawn with plotly,
and alerts in words (likelihood displacement, KL running away, NaN)."""
from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from app.curves import displacement_start
from labeling import runs
from storage.db import Queries

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def scalars(db: Queries, run_ids: list[str], names: list[str], split: str = "train") -> pd.DataFrame:
    if not run_ids or not names:
        return pd.DataFrame(columns=["run_id", "step", "name", "value", "site"])
    return db.df(f"""SELECT run_id, step, name, value, site FROM run_scalars
                     WHERE run_id IN ({', '.join('?' * len(run_ids))}) AND name IN ({', '.join('?' * len(names))})
                       AND split = ? ORDER BY run_id, step""", [*run_ids, *names, split])


# The look of plotly's "plotly_white", set by hand: applying a named template deep-copies and validates it for every
# figure, which was three quarters of a Runs-page refresh (10 figures every 2 s, in the process that serves labeling).
_AXIS = dict(gridcolor="#ebf0f8", zerolinecolor="#ebf0f8", linecolor="#ebf0f8", automargin=True)
_LAYOUT = go.Layout(template="none", plot_bgcolor="white", paper_bgcolor="white", height=300,
                    margin=dict(l=40, r=10, t=40, b=30), legend=dict(orientation="h", y=-0.25),
                    font=dict(color="#2a3f5f"), colorway=["#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A",
                                                          "#19d3f3", "#FF6692", "#B6E880", "#FF97FF", "#FECB52"],
                    xaxis=dict(_AXIS, title="step"), yaxis=_AXIS)


def _fig(title: str, ytitle: str = "") -> go.Figure:
    fig = go.Figure(layout=_LAYOUT)
    fig.update_layout(title=title, yaxis_title=ytitle)
    return fig


def line_chart(db: Queries, run_ids: list[str], names: list[str], title: str, labels: dict | None = None,
               by_site: bool = False, split: str = "train") -> go.Figure:
    df = scalars(db, run_ids, names, split)
    fig = _fig(title)
    if df.empty:
        fig.add_annotation(text="no data yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return fig
    keys = ["run_id", "name"] + (["site"] if by_site else [])
    run_names = runs.names(db, run_ids) if len(run_ids) > 1 else {}
    for key, g in df.groupby(keys, dropna=False):
        run, name = key[0], key[1]
        label = (labels or {}).get(name, name)
        if len(run_ids) > 1:      # runs by the names people gave them (Compare)
            label = f"{run_names.get(run, run)} · {label}"
        if by_site and isinstance(key[2], str):
            label += f" · {key[2]}"
        g = g.groupby("step", as_index=False)["value"].mean()
        fig.add_trace(go.Scatter(x=g.step, y=g.value, mode="lines+markers", name=label, marker=dict(size=4)))
    return fig


def loss_chart(db, run_ids):
    return line_chart(db, run_ids, ["loss"], "Loss")


def rewards_chart(db, run_ids):
    return line_chart(db, run_ids, ["rewards/chosen", "rewards/rejected", "rewards/margins"], "Rewards",
                      {"rewards/chosen": "chosen / good", "rewards/rejected": "rejected / bad"})


def logps_chart(db, run_ids):
    return line_chart(db, run_ids, ["logps/chosen", "logps/rejected"], "Log-probabilities of the answers")


def accuracy_chart(db, run_ids):
    return line_chart(db, run_ids, ["rewards/accuracies"], "Reward accuracy (chosen above rejected)")


def kl_chart(db, run_ids):
    """Mean m_θ against the base model (every algorithm; comparable across runs), KTO's z₀, and MRPO's deviation
    from its virtual reference, which is a different quantity and so has its own name."""
    return line_chart(db, run_ids, ["kl", "m_theta", "m_theta_vref"], "KL estimate (KTO z₀) and mean m_θ",
                      {"kl": "z₀ (KTO)", "m_theta": "m_θ (against the base)",
                       "m_theta_vref": "m_θ against MRPO's virtual reference"})


def beta_chart(db: Queries, run_id: str) -> go.Figure:
    """ε-DPO: the global β over steps and the share of instances whose β̃ was relaxed / tightened / kept. A
    federated run draws each site's β and the server's average of them (the global β each round starts from)."""
    df = scalars(db, [run_id], ["kl/beta", "kl/p_epsilon_steps", "kl/n_epsilon_steps", "federated/beta"])
    fig = _fig("β trajectory (ε-DPO)")
    if df.empty:
        fig.add_annotation(text="β moves only in ε-DPO runs", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return fig
    w = df.pivot_table(index="step", columns="name", values="value")
    sites = df[(df["name"] == "kl/beta") & df["site"].notna()]
    if sites.empty:
        fig.add_trace(go.Scatter(x=w.index, y=w.get("kl/beta"), name="global β", mode="lines+markers", yaxis="y"))
    for site, g in sites.groupby("site"):
        fig.add_trace(go.Scatter(x=g.step, y=g.value, name=f"β at {site}", mode="lines+markers", yaxis="y"))
    if "federated/beta" in w:
        g = w["federated/beta"].dropna()
        fig.add_trace(go.Scatter(x=g.index, y=g, name="global β (averaged by the server)", mode="markers",
                                 marker=dict(size=9, symbol="diamond"), yaxis="y"))
    relaxed, tightened = w.get("kl/p_epsilon_steps"), w.get("kl/n_epsilon_steps")
    if relaxed is not None and tightened is not None:
        fig.add_trace(go.Bar(x=w.index, y=relaxed, name="β̃ relaxed (s=+1)", yaxis="y2", opacity=0.5))
        fig.add_trace(go.Bar(x=w.index, y=tightened, name="β̃ tightened (s=−1)", yaxis="y2", opacity=0.5))
        fig.add_trace(go.Bar(x=w.index, y=1 - relaxed - tightened, name="β̃ kept", yaxis="y2", opacity=0.3))
    fig.update_layout(barmode="stack", yaxis=dict(title="β"),
                      yaxis2=dict(title="share of instances", overlaying="y", side="right", range=[0, 1]))
    return fig


def m_theta_bands(db: Queries, run_id: str) -> go.Figure:
    """m_θ per instance as quantile bands (10-90%, 25-75%, median) over steps, per side."""
    df = db.df("""SELECT step, side, quantile_cont(m_theta, [0.1, 0.25, 0.5, 0.75, 0.9]) AS q
                  FROM run_instances WHERE run_id = ? AND m_theta IS NOT NULL AND side <> 'kl'
                  GROUP BY step, side ORDER BY step""", [run_id])
    fig = _fig("Deviation m_θ per instance (quantile bands)", "m_θ")
    if df.empty:
        fig.add_annotation(text="no instances yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return fig
    colors = {"chosen": "22,163,74", "desirable": "22,163,74", "rejected": "220,38,38", "undesirable": "220,38,38",
              "sft": "37,99,235"}
    for side, g in df.groupby("side"):
        q = pd.DataFrame(g["q"].tolist(), columns=QUANTILES, index=g["step"])
        c = colors.get(side, "100,100,100")
        for lo, hi, alpha in ((0.1, 0.9, 0.12), (0.25, 0.75, 0.25)):
            fig.add_trace(go.Scatter(x=list(q.index) + list(q.index[::-1]), y=list(q[hi]) + list(q[lo][::-1]),
                                     fill="toself", fillcolor=f"rgba({c},{alpha})", line=dict(width=0),
                                     name=f"{side} {int(lo * 100)}–{int(hi * 100)}%", hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=q.index, y=q[0.5], mode="lines", line=dict(color=f"rgb({c})"),
                                 name=f"{side} median"))
    return fig


def m_theta_histogram(db: Queries, run_id: str) -> go.Figure:
    step = db.scalar("SELECT max(step) FROM run_instances WHERE run_id = ?", [run_id])
    fig = _fig(f"m_θ now (step {step})" if step else "m_θ now", "count")
    fig.update_layout(xaxis_title="m_θ", barmode="overlay")
    if step is None:
        return fig
    df = db.df("SELECT side, m_theta FROM run_instances WHERE run_id = ? AND step = ?", [run_id, step])
    for side, g in df.groupby("side"):
        fig.add_trace(go.Histogram(x=g.m_theta, name=side, opacity=0.6, nbinsx=30))
    return fig


def minor_coef_chart(db, run_id):
    fig = line_chart(db, [run_id], ["minor/coef", "minor/coef_min", "minor/coef_max"], "MinorSFT coefficient")
    if not fig.data:
        fig.layout.annotations = []
        fig.add_annotation(text="only MinorSFT runs have a coefficient", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
    return fig


def beta_tilde_bands(db: Queries, run_id: str) -> go.Figure:
    """ε-DPO: the per-instance β̃ = β / (1 + ε s) as quantile bands over steps (one value per pair)."""
    df = db.df("""SELECT step, quantile_cont(beta_i, [0.1, 0.25, 0.5, 0.75, 0.9]) AS q, min(beta_i) AS lo,
                         max(beta_i) AS hi FROM run_instances
                  WHERE run_id = ? AND beta_i IS NOT NULL AND side = 'chosen' GROUP BY step ORDER BY step""", [run_id])
    fig = _fig("β̃ per pair (ε-DPO): quantile bands", "β̃")
    if df.empty:
        fig.add_annotation(text="no instances yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return fig
    q = pd.DataFrame(df["q"].tolist(), columns=QUANTILES, index=df["step"])
    for lo, hi, alpha in ((0.1, 0.9, 0.12), (0.25, 0.75, 0.25)):
        fig.add_trace(go.Scatter(x=list(q.index) + list(q.index[::-1]), y=list(q[hi]) + list(q[lo][::-1]),
                                 fill="toself", fillcolor=f"rgba(99,110,250,{alpha})", line=dict(width=0),
                                 name=f"{int(lo * 100)}–{int(hi * 100)}%", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=q.index, y=q[0.5], mode="lines", name="median"))
    fig.add_trace(go.Scatter(x=df.step, y=df.lo, mode="lines", line=dict(dash="dot"), name="min"))
    fig.add_trace(go.Scatter(x=df.step, y=df.hi, mode="lines", line=dict(dash="dot"), name="max"))
    return fig


def mrpo_chart(db: Queries, run_id: str) -> go.Figure:
    """MRPO: the mean weight of each reference (the base first) and the share of auxiliary log-probs clipped."""
    df = db.df("""SELECT step, name, avg(value) AS value FROM run_scalars
                  WHERE run_id = ? AND split = 'train' AND (name LIKE 'mrpo/weight_%' OR name = 'mrpo/clipped_fraction')
                  GROUP BY step, name ORDER BY step""", [run_id])
    fig = _fig("MRPO: reference weights and clipped share")
    if df.empty:
        fig.add_annotation(text="only MRPO runs have reference weights", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
        return fig
    for name, g in df.groupby("name"):
        k = name.removeprefix("mrpo/weight_")
        clipped = name == "mrpo/clipped_fraction"
        fig.add_trace(go.Scatter(x=g.step, y=g.value, mode="lines+markers" if not clipped else "lines",
                                 line=dict(dash="dot") if clipped else None, yaxis="y2" if clipped else "y",
                                 name="clipped share" if clipped else ("base" if k == "0" else f"reference {k}")))
    fig.update_layout(yaxis=dict(title="weight", range=[0, 1]),
                      yaxis2=dict(title="clipped share", overlaying="y", side="right", range=[0, 1]),
                      margin=dict(r=60))
    return fig


def kto_kl_chart(db: Queries, run_id: str) -> go.Figure:
    """KTO: z₀ as used (clamped at 0) and the estimate before the clamp, which shows how often it is cut."""
    return line_chart(db, [run_id], ["kl", "kl/unclamped"], "KTO: z₀ and its estimate before the clamp",
                      {"kl": "z₀ (clamped at 0)", "kl/unclamped": "estimate before the clamp"})


def heldout_chart(db: Queries, run_id: str) -> go.Figure:
    """Held-out m_θ (against the base) and accuracy, evaluated every `eval_every` steps."""
    return line_chart(db, [run_id], ["eval/m_theta", "eval/accuracy", "eval/likelihood_accuracy"],
                      "Held-out examples: m_θ and accuracy", {"eval/m_theta": "held-out m_θ",
                                                              "eval/accuracy": "held-out accuracy",
                                                              "eval/likelihood_accuracy": "likelihood accuracy"},
                      split="eval")


def per_site_chart(db: Queries, run_id: str) -> go.Figure:
    """Per site over steps: the loss (solid) and mean m_θ (dotted). Federated runs log each site's loss with its
    site; a Flower coordinator has only those (per-example values stay at the sites). Other runs: the mean
    per-instance loss by the data's site column."""
    loss = db.df("""SELECT step, site, avg(value) AS loss FROM run_scalars
                    WHERE run_id = ? AND name = 'loss' AND split = 'train' AND site IS NOT NULL
                    GROUP BY ALL ORDER BY step""", [run_id])
    inst = db.df("""SELECT step, coalesce(site, '(no site)') AS site, avg(loss) AS loss, avg(m_theta) AS m
                    FROM run_instances WHERE run_id = ? GROUP BY ALL ORDER BY step""", [run_id])
    if loss.empty:
        loss = inst[["step", "site", "loss"]]
    fig = _fig("Per site: loss (solid) and mean m_θ (dotted)")
    if loss.empty and inst.empty:
        fig.add_annotation(text="no per-site values yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return fig
    for site, g in loss.groupby("site"):
        fig.add_trace(go.Scatter(x=g.step, y=g.loss, mode="lines+markers", name=f"{site} loss"))
    for site, g in inst.groupby("site"):
        fig.add_trace(go.Scatter(x=g.step, y=g.m, mode="lines", line=dict(dash="dot"), name=f"{site} m_θ",
                                 yaxis="y2"))
    if not inst.empty:
        fig.update_layout(yaxis2=dict(title="m_θ", overlaying="y", side="right"), margin=dict(r=60))
    return fig


def extreme_instances(db: Queries, run_id: str, n: int = 5, only: str | None = None) -> pd.DataFrame:
    """The training examples with the most extreme m_θ at the latest step, with their prompt, answer and labels
    (`only`: just that annotator's own labels, for an annotator, who never sees others' votes)."""
    step = db.scalar("SELECT max(step) FROM run_instances WHERE run_id = ?", [run_id])
    if step is None:
        return pd.DataFrame(columns=["m_θ", "side", "task", "prompt", "answer", "labels"])
    df = db.df("""
        WITH x AS (SELECT * FROM run_instances WHERE run_id = ? AND step = ?),
        picked AS ((SELECT * FROM x ORDER BY m_theta DESC LIMIT ?) UNION ALL (SELECT * FROM x ORDER BY m_theta LIMIT ?))
        SELECT DISTINCT picked.m_theta, picked.side, picked.task_id, p.text AS prompt,
               CASE WHEN picked.side IN ('rejected', 'undesirable') AND t.kind = 'pair' THEN rb.text ELSE ra.text END AS answer,
               (SELECT string_agg(annotator || CASE WHEN source = 'resolution' THEN ' (resolution)' ELSE '' END
                                  || ': ' || value, ', ' ORDER BY id) FROM current_annotations
                WHERE task_id = picked.task_id AND (CAST(? AS VARCHAR) IS NULL OR annotator = ?)) AS labels
        FROM picked LEFT JOIN tasks t ON t.id = picked.task_id LEFT JOIN prompts p ON p.id = t.prompt_id
        LEFT JOIN responses ra ON ra.id = t.response_a LEFT JOIN responses rb ON rb.id = t.response_b
        ORDER BY picked.m_theta DESC""", [run_id, step, n, n, only, only])
    df["prompt"] = df["prompt"].fillna("").str.slice(0, 120)
    df["answer"] = df["answer"].fillna("").str.slice(0, 120)
    return df.rename(columns={"m_theta": "m_θ", "task_id": "task"})


def alerts(db: Queries, run_id: str) -> list[str]:
    """Plain-words warnings about a run's health."""
    out = []
    df = scalars(db, [run_id], ["loss", "logps/chosen", "logps/rejected", "kl", "m_theta"])
    if df.empty:
        return out
    w = df.pivot_table(index="step", columns="name", values="value", aggfunc="mean").sort_index()
    if w.isna().all().any() or any(not math.isfinite(v) for v in df["value"]):
        out.append("Some values are NaN or infinite: the run has diverged. Lower the learning rate.")
    if {"logps/chosen", "logps/rejected"} <= set(w.columns):
        both = w[["logps/chosen", "logps/rejected"]].dropna()
        since = displacement_start(list(both.index), list(both["logps/chosen"]), list(both["logps/rejected"]))
        if since is not None:
            out.append(f"Likelihood displacement since step {since}: both the chosen and the rejected answers have "
                       "become less likely than at the start. The model is pushing the pair apart by lowering both; "
                       "consider a larger β or fewer steps.")
    for name in ("kl", "m_theta"):
        if name in w and len(w[name].dropna()) >= 4:
            s = w[name].dropna()
            if abs(s.iloc[-1]) > 0.5 and abs(s.iloc[-1]) > 3 * max(abs(s.iloc[: len(s) // 2]).mean(), 1e-3):
                out.append(f"KL is running away ({name} = {s.iloc[-1]:.2f}): the model is drifting far from the "
                           "reference. Raise β or lower the learning rate.")
                break
    return out
