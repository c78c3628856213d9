"""The quantities the objectives compute, each drawn: ε-DPO's per-pair β̃ and each site's β beside the server's
average, MRPO's weights and clipped share, KTO's z₀ before the clamp, held-out m_θ; each chart offered only for
the algorithms that log it."""
from app import chart_guide, charts


def scalar(db, run, step, name, value, site=None, split="train"):
    db.execute("INSERT INTO run_scalars (run_id, step, name, value, site, split) VALUES (?, ?, ?, ?, ?, ?)",
               [run, step, name, value, site, split])


def traces(fig):
    return {t.name: t for t in fig.data}


def test_beta_tilde_bands_follow_the_per_pair_values(db):
    for step, betas in ((1, [0.1, 0.1, 0.1, 0.1]), (2, [0.099, 0.1, 0.101, 0.101])):
        for i, b in enumerate(betas):
            for side in ("chosen", "rejected"):     # a pair's two rows carry the same β̃: counted once
                db.execute("INSERT INTO run_instances (run_id, step, example_id, side, beta_i) VALUES (?, ?, ?, ?, ?)",
                           ["e", step, f"x{i}", side, b])
    t = traces(charts.beta_tilde_bands(db, "e"))
    assert list(t["median"].y) == [0.1, 0.1005]
    assert list(t["min"].y) == [0.1, 0.099] and list(t["max"].y) == [0.1, 0.101]


def test_federated_beta_is_drawn_per_site_with_the_servers_average(db):
    for step, (a, b) in enumerate([(0.1, 0.1), (0.099, 0.102)], 1):
        scalar(db, "f", step, "kl/beta", a, "plant-a")
        scalar(db, "f", step, "kl/beta", b, "plant-b")
    scalar(db, "f", 2, "federated/beta", 0.1005)
    t = traces(charts.beta_chart(db, "f"))
    assert list(t["β at plant-a"].y) == [0.1, 0.099] and list(t["β at plant-b"].y) == [0.1, 0.102]
    assert list(t["global β (averaged by the server)"].y) == [0.1005]
    assert "global β" not in t       # no line averaging the sites' betas


def test_mrpo_weights_clipped_share_kto_clamp_and_heldout_m_theta(db):
    for step in (1, 2):
        scalar(db, "m", step, "mrpo/weight_0", 0.7)
        scalar(db, "m", step, "mrpo/weight_1", 0.3)
        scalar(db, "m", step, "mrpo/clipped_fraction", 0.25 * step)
        scalar(db, "k", step, "kl", 0.0)
        scalar(db, "k", step, "kl/unclamped", -0.5 * step)
    for step in (0, 10, 20):
        scalar(db, "m", step, "eval/m_theta", step / 100, split="eval")
    t = traces(charts.mrpo_chart(db, "m"))
    assert list(t["base"].y) == [0.7, 0.7] and list(t["reference 1"].y) == [0.3, 0.3]
    assert list(t["clipped share"].y) == [0.25, 0.5]
    t = traces(charts.kto_kl_chart(db, "k"))
    assert list(t["estimate before the clamp"].y) == [-0.5, -1.0] and list(t["z₀ (clamped at 0)"].y) == [0, 0]
    assert list(traces(charts.heldout_chart(db, "m"))["held-out m_θ"].x) == [0, 10, 20]


def test_each_new_chart_is_offered_only_where_it_applies():
    panel = {p.key: p for p in chart_guide.PANELS}
    assert panel["beta_tilde"].applies("eps_dpo") and not panel["beta_tilde"].applies("dpo")
    assert panel["mrpo"].applies("mrpo") and not panel["mrpo"].applies("eps_dpo")
    assert panel["kto_kl"].applies("kto") and not panel["kto_kl"].applies("sft")
    assert panel["heldout"].applies("minor_sft") and panel["accuracy"].applies("minor_dpo")
