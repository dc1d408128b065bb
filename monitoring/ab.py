"""A/B tests: deterministic assignment of users to variants, and the statistics of the analysis.

Assignment (`core.experiment.assign_variant`) is a pure function serving can call on every request: the user id
is hashed with SHA-256 together with a per-experiment salt (the experiment name by default), the
hash is mapped to a point in [0, 1), and the variants (sorted by name, so the order of a config
dict does not matter) own consecutive slices proportional to their weights. The same user always
gets the same variant of an experiment; different experiments are independent of each other.

Analysis, for binary metrics (e.g. "user clicked a recommended item", "user purchased one"):
* per variant: units, successes, rate;
* per (metric, treatment vs control): absolute lift with a Wald confidence interval (unpooled),
  relative lift with a log-ratio (Katz) interval, two-proportion z-test (pooled) p-value;
* multiple comparisons (several metrics and/or treatments): Holm (family-wise error) or
  Benjamini-Hochberg (false discovery rate) adjusted p-values, `significant` uses them;
* sample-ratio mismatch: chi-square goodness of fit of units per variant against the configured
  weights (a tiny p-value, default < 0.001, means the assignment or the logging is broken and the
  lifts should not be trusted);
* power: units per group needed to detect a given minimum effect, and the power the observed
  sizes have for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from core.experiment import assign_variant, bucket, check_variants  # noqa: F401
from monitoring.errors import MonitoringInputError

CORRECTIONS = ("holm", "bh", "none")


# Assignment lives in core.experiment (serving assigns on every request); re-exported here for the
# analysis and the CLI.


def parse_variants(text: str) -> dict[str, float]:
    """`control=50,treatment=50` -> {"control": 50.0, "treatment": 50.0}."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, sep, weight = part.partition("=")
        if not sep or not name.strip():
            raise MonitoringInputError(f"invalid variant {part!r}: use name=weight, e.g. control=50,treatment=50")
        try:
            out[name.strip()] = float(weight)
        except ValueError as error:
            raise MonitoringInputError(f"invalid weight in {part!r}") from error
    if not out:
        raise MonitoringInputError("no variants given: use name=weight,... e.g. control=50,treatment=50")
    try:
        check_variants(out)
    except ValueError as error:
        raise MonitoringInputError(str(error)) from error
    return out


# ------------------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class ProportionTest:
    control_successes: int
    control_n: int
    treatment_successes: int
    treatment_n: int
    control_rate: float
    treatment_rate: float
    abs_lift: float  # treatment - control
    abs_ci: tuple[float, float]
    rel_lift: float | None  # treatment / control - 1
    rel_ci: tuple[float, float] | None
    z: float
    p_value: float
    alpha: float


def two_proportion_ztest(control_successes: int, control_n: int, treatment_successes: int, treatment_n: int,
                         alpha: float = 0.05) -> ProportionTest:
    """Two-sided z-test of equal proportions (pooled standard error, as `statsmodels`'
    `proportions_ztest`); Wald interval of the difference (unpooled); Katz log interval of the ratio."""
    x1, n1, x2, n2 = int(control_successes), int(control_n), int(treatment_successes), int(treatment_n)
    if n1 <= 0 or n2 <= 0:
        raise ValueError("both groups need at least one unit")
    if not (0 <= x1 <= n1 and 0 <= x2 <= n2):
        raise ValueError("successes must be between 0 and the group size")
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    diff = p2 - p1
    if se_pooled > 0:
        z = diff / se_pooled
        p_value = float(2 * stats.norm.sf(abs(z)))
    else:  # both groups all 0 or all 1
        z, p_value = 0.0, 1.0
    crit = float(stats.norm.ppf(1 - alpha / 2))
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    abs_ci = (diff - crit * se, diff + crit * se)
    rel_lift, rel_ci = None, None
    if x1 > 0:
        rel_lift = p2 / p1 - 1
        if x2 > 0:
            se_log = math.sqrt(1 / x2 - 1 / n2 + 1 / x1 - 1 / n1)
            log_ratio = math.log(p2 / p1)
            rel_ci = (math.exp(log_ratio - crit * se_log) - 1, math.exp(log_ratio + crit * se_log) - 1)
    return ProportionTest(x1, n1, x2, n2, p1, p2, diff, abs_ci, rel_lift, rel_ci, float(z), p_value, alpha)


def adjust_pvalues(p_values: Sequence[float], method: str = "holm") -> np.ndarray:
    """Holm step-down (family-wise error rate) or Benjamini-Hochberg step-up (false discovery rate)
    adjusted p-values, in the input order; `none` returns them unchanged."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if method == "none" or m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        adjusted = np.maximum.accumulate(np.minimum((m - np.arange(m)) * ranked, 1.0))
    elif method in ("bh", "fdr_bh", "benjamini-hochberg"):
        adjusted = np.minimum.accumulate((m / np.arange(m, 0, -1)) * ranked[::-1])[::-1]
        adjusted = np.minimum(adjusted, 1.0)
    else:
        raise ValueError(f"unknown correction {method!r}: use one of {CORRECTIONS}")
    out = np.empty(m)
    out[order] = adjusted
    return out


@dataclass(frozen=True)
class SRMResult:
    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    alpha: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < self.alpha


def srm_check(counts: Mapping[str, int], weights: Mapping[str, float], alpha: float = 0.001) -> SRMResult:
    """Chi-square goodness of fit of the observed units per variant to the configured split."""
    normalised = dict(check_variants(weights))
    unknown = sorted(set(counts) - set(normalised))
    if unknown:
        raise MonitoringInputError(f"variants {unknown} in the data are not in the configured split "
                                   f"{sorted(normalised)}")
    names = sorted(normalised)
    observed = np.array([int(counts.get(n, 0)) for n in names], dtype=float)
    total = observed.sum()
    if total <= 0:
        raise MonitoringInputError("no units to check the sample ratio on")
    expected = np.array([normalised[n] * total for n in names])
    keep = expected > 0
    if (observed[~keep] > 0).any():
        return SRMResult(dict(zip(names, observed.astype(int).tolist())), dict(zip(names, expected.tolist())),
                         math.inf, 0.0, alpha)
    if keep.sum() < 2:
        return SRMResult(dict(zip(names, observed.astype(int).tolist())), dict(zip(names, expected.tolist())),
                         0.0, 1.0, alpha)
    chi2, p_value = stats.chisquare(observed[keep], expected[keep])
    return SRMResult(dict(zip(names, observed.astype(int).tolist())), dict(zip(names, expected.tolist())),
                     float(chi2), float(p_value), alpha)


def required_sample_size(baseline: float, mde: float, alpha: float = 0.05, power: float = 0.8,
                         relative: bool = True) -> int:
    """Units per group (equal groups) for a two-sided two-proportion z-test to detect a change of
    `mde` (relative to `baseline` when `relative`, else absolute) with the given power:
    n = (z_{1-a/2} sqrt(2 pbar (1 - pbar)) + z_{1-b} sqrt(p1 (1 - p1) + p2 (1 - p2)))^2 / (p2 - p1)^2."""
    p1 = float(baseline)
    p2 = p1 * (1 + mde) if relative else p1 + mde
    if not (0 < p1 < 1 and 0 < p2 < 1) or p1 == p2:
        raise ValueError(f"need 0 < baseline, baseline + effect < 1 and an effect != 0 (got {p1}, {p2})")
    z_alpha, z_beta = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    p_bar = (p1 + p2) / 2
    n = (z_alpha * math.sqrt(2 * p_bar * (1 - p_bar)) + z_beta * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 \
        / (p2 - p1) ** 2
    return int(math.ceil(n - 1e-9))


def achieved_power(baseline: float, mde: float, n_control: int, n_treatment: int, alpha: float = 0.05,
                   relative: bool = True) -> float:
    """Power of the two-sided test to detect `mde` with the given group sizes (normal approximation,
    the inverse of `required_sample_size`)."""
    p1 = float(baseline)
    p2 = p1 * (1 + mde) if relative else p1 + mde
    if not (0 < p1 < 1 and 0 < p2 < 1) or n_control <= 0 or n_treatment <= 0:
        return float("nan")
    p_bar = (p1 * n_control + p2 * n_treatment) / (n_control + n_treatment)
    se0 = math.sqrt(p_bar * (1 - p_bar) * (1 / n_control + 1 / n_treatment))
    se1 = math.sqrt(p1 * (1 - p1) / n_control + p2 * (1 - p2) / n_treatment)
    z_alpha = stats.norm.ppf(1 - alpha / 2)
    delta = abs(p2 - p1)
    return float(stats.norm.cdf((delta - z_alpha * se0) / se1) + stats.norm.cdf((-delta - z_alpha * se0) / se1))


# ------------------------------------------------------------------------------------ analysis


@dataclass
class ABResult:
    per_variant: pd.DataFrame  # variant, units, <metric>_successes, <metric>_rate ...
    comparisons: pd.DataFrame  # metric, variant, control, rates, lifts, CIs, z, p, adjusted p, significant
    srm: SRMResult | None
    power: pd.DataFrame  # metric, baseline, mde, required_per_group, achieved_power per variant
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        srm = None if self.srm is None else {
            "observed": self.srm.observed, "expected": self.srm.expected, "chi2": self.srm.chi2,
            "p_value": self.srm.p_value, "alpha": self.srm.alpha, "mismatch": self.srm.mismatch}
        return {"info": self.info, "per_variant": self.per_variant.to_dict(orient="records"),
                "comparisons": self.comparisons.to_dict(orient="records"), "sample_ratio": srm,
                "power": self.power.to_dict(orient="records")}


def analyze(units: pd.DataFrame, metrics: Sequence[str], control: str, weights: Mapping[str, float] | None = None,
            alpha: float = 0.05, correction: str = "holm", mde: float = 0.05, mde_relative: bool = True,
            power: float = 0.8, srm_alpha: float = 0.001) -> ABResult:
    """`units`: one row per unit (user or request) with a `variant` column and one 0/1 column per
    metric. Every treatment variant is compared with `control` on every metric."""
    if correction not in CORRECTIONS:
        raise MonitoringInputError(f"unknown correction {correction!r}: use one of {CORRECTIONS}")
    if units.empty:
        raise MonitoringInputError("no units (users / requests) with a variant in this window")
    missing = [m for m in metrics if m not in units]
    if missing:
        raise MonitoringInputError(f"unknown metrics {missing}; available: "
                                   f"{[c for c in units.columns if c != 'variant']}")
    variants = sorted(units["variant"].dropna().astype(str).unique())
    if control not in variants:
        raise MonitoringInputError(f"control variant {control!r} has no units; variants seen: {variants}")
    treatments = [v for v in variants if v != control]
    if not treatments:
        raise MonitoringInputError(f"only the control variant {control!r} has units: nothing to compare")

    grouped = units.groupby(units["variant"].astype(str))
    per_variant = pd.DataFrame({"variant": variants, "units": [int(grouped.size()[v]) for v in variants]})
    for metric in metrics:
        successes = grouped[metric].sum()
        per_variant[f"{metric}_successes"] = [int(successes[v]) for v in variants]
        per_variant[f"{metric}_rate"] = per_variant[f"{metric}_successes"] / per_variant["units"]
    table = per_variant.set_index("variant")

    rows = []
    for metric in metrics:
        for variant in treatments:
            test = two_proportion_ztest(table.at[control, f"{metric}_successes"], table.at[control, "units"],
                                        table.at[variant, f"{metric}_successes"], table.at[variant, "units"], alpha)
            rows.append({"metric": metric, "variant": variant, "control": control,
                         "control_rate": test.control_rate, "variant_rate": test.treatment_rate,
                         "abs_lift": test.abs_lift, "abs_ci_low": test.abs_ci[0], "abs_ci_high": test.abs_ci[1],
                         "rel_lift": test.rel_lift,
                         "rel_ci_low": None if test.rel_ci is None else test.rel_ci[0],
                         "rel_ci_high": None if test.rel_ci is None else test.rel_ci[1],
                         "z": test.z, "p_value": test.p_value})
    comparisons = pd.DataFrame(rows)
    comparisons["p_adjusted"] = adjust_pvalues(comparisons["p_value"].to_numpy(), correction)
    comparisons["significant"] = comparisons["p_adjusted"] < alpha

    srm = srm_check(table["units"].to_dict(), weights, srm_alpha) if weights else None

    power_rows = []
    for metric in metrics:
        baseline = float(table.at[control, f"{metric}_rate"])
        try:
            needed = required_sample_size(baseline, mde, alpha, power, mde_relative)
        except ValueError:
            needed = None
        for variant in treatments:
            power_rows.append({"metric": metric, "variant": variant, "baseline": baseline, "mde": mde,
                               "mde_relative": mde_relative, "required_per_group": needed,
                               "control_units": int(table.at[control, "units"]),
                               "variant_units": int(table.at[variant, "units"]),
                               "achieved_power": achieved_power(baseline, mde, int(table.at[control, "units"]),
                                                                int(table.at[variant, "units"]), alpha, mde_relative)})
    info = {"control": control, "metrics": list(metrics), "alpha": alpha, "correction": correction,
            "comparisons": len(comparisons), "power_target": power, "srm_alpha": srm_alpha}
    return ABResult(per_variant, comparisons, srm, pd.DataFrame(power_rows), info)


def ab_units(per_request: pd.DataFrame, unit: str = "user") -> tuple[pd.DataFrame, dict[str, int]]:
    """Per-request outcomes (`online_metrics.per_request`: variant, user_id, clicked, converted) ->
    one row per unit with 0/1 metrics `clicked` / `converted`. For users (the randomization unit),
    a user counts as clicked when any of their requests was; users logged under several variants
    (assignment broken or changed mid-experiment) are left out and counted."""
    frame = per_request.dropna(subset=["variant"]).copy()
    frame["variant"] = frame["variant"].astype(str)
    problems = {"requests_without_variant": int(per_request["variant"].isna().sum())}
    if unit == "request":
        out = frame[["variant", "clicked", "converted"]].astype({"clicked": int, "converted": int})
        return out.reset_index(drop=True), problems
    if unit != "user":
        raise MonitoringInputError(f"unknown unit {unit!r}: use user or request")
    n_variants = frame.groupby("user_id")["variant"].nunique()
    mixed = set(n_variants[n_variants > 1].index)
    problems["users_in_several_variants"] = len(mixed)
    frame = frame[~frame["user_id"].isin(mixed)]
    out = frame.groupby("user_id").agg(variant=("variant", "first"), clicked=("clicked", "max"),
                                       converted=("converted", "max"))
    return out.astype({"clicked": int, "converted": int}).reset_index(), problems


# ------------------------------------------------------------------------------------ report


def plot_rates(result: ABResult) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from monitoring import html

    metrics = result.info["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.4), squeeze=False)
    table = result.per_variant
    crit = stats.norm.ppf(1 - result.info["alpha"] / 2)
    for ax, metric in zip(axes.flat, metrics):
        rates = table[f"{metric}_rate"].to_numpy()
        errors = crit * np.sqrt(rates * (1 - rates) / table["units"].to_numpy())
        ax.bar(table["variant"], rates, yerr=errors, capsize=6,
               color=["#8a94a6" if v == result.info["control"] else "#3b6fd8" for v in table["variant"]])
        ax.set_title(f"{metric} rate ({1 - result.info['alpha']:.0%} CI)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return html.figure(fig, "rates per variant")


def ab_page(result: ABResult, title: str) -> str:
    from monitoring import html

    parts = []
    if result.srm is not None:
        parts.append(html.verdict(not result.srm.mismatch,
                                  f"Sample ratio: chi2 = {result.srm.chi2:.3g}, p = {result.srm.p_value:.3g} - "
                                  + ("MISMATCH: the split differs from the configuration, do not trust the lifts"
                                     if result.srm.mismatch else "consistent with the configured split")))
    info = result.info
    parts += [html.paragraph(f"control = {info['control']}; alpha = {info['alpha']}; correction = "
                             f"{info['correction']} over {info['comparisons']} comparisons; "
                             f"unit = {info.get('unit', '?')}", "note"),
              html.heading("Per variant"), html.table(result.per_variant), plot_rates(result),
              html.heading("Comparisons with the control"), html.table(result.comparisons),
              html.heading("Power"), html.table(result.power)]
    if result.srm is not None:
        srm = pd.DataFrame({"variant": list(result.srm.observed), "observed": list(result.srm.observed.values()),
                            "expected": [result.srm.expected[v] for v in result.srm.observed]})
        parts += [html.heading("Sample ratio"), html.table(srm)]
    extra = {k: v for k, v in info.items() if k not in ("control", "alpha", "correction", "comparisons", "metrics")}
    parts += [html.heading("Details", 3), html.bullet_list(f"{k}: {v}" for k, v in extra.items())]
    return html.page(title, html.section(*parts))
