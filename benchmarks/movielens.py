"""Recommendation quality on MovieLens-100K against established recommenders.

Loads the ratings (``training.data.movielens``), builds both temporal protocols of
``training.evaluation.protocols`` (a global day-aligned cut at ~80% of the interactions, and a
per-user last-20% split), runs every peer of ``training.evaluation.peers`` (random, popularity,
recent popularity, item-kNN, implicit's ALS and BPR; the tuned ones selected on the protocol's
validation split by NDCG@10) and scores all lists with the platform's own metric code at K=10.
Prints one table per protocol and writes JSON (metrics, selected hyper-parameters, protocol
statistics) atomically.

    .venv/bin/python benchmarks/movielens.py --data ../shared/datasets/ml-100k \
        --out reports/benchmarks/movielens.json

With ``--platform`` (the default) the platform's own two-stage recommender is one more row: the
whole platform runs on each protocol's train part (Spark features, ``feast apply``, Feast
point-in-time training sets, two-tower + FAISS + co-visitation + trending candidates, LightGBM
ranker; see ``training.evaluation.two_stage_benchmark``), and the table ends with its NDCG@10 lift
over the best peer. That takes a few minutes per protocol; ``--no-platform`` runs the peers only.

Another model joins the same table through ``run_benchmark(data_dir, extra_models={name: fn})``
where ``fn(protocol) -> {user_id: [item_id, ...]}``: it is evaluated on exactly the same users,
exclusions, catalog and metric code as the peers (see ``evaluate_lists``).
"""

from __future__ import annotations

import importlib
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from core import atomic
from core.settings import REPO_ROOT
from training.data.movielens import movielens_dir, read_interactions, read_items
from training.evaluation.paired import paired_lift
from training.evaluation.peers import DEFAULT_GRIDS, Grid, PeerConfig, run_peers
from training.evaluation.protocols import (
    DEFAULT_MIN_INTERACTIONS,
    DEFAULT_TEST_SHARE,
    Protocol,
    evaluate_lists,
    global_temporal_split,
    per_user_temporal_split,
    user_ndcg,
)

__all__ = ["evaluate_lists", "run_benchmark", "build_protocols", "print_tables", "write_json_atomic"]

console = Console(width=140)
ExtraModel = Callable[[Protocol], Mapping[int, Sequence[int]]]
TABLE_METRICS: tuple[str, ...] = ("ndcg", "recall", "hitrate", "map", "coverage")
QUICK_GRIDS: dict[str, Grid] = {
    "item_knn": {"neighbours": [50, None]},
    "als": {"factors": [32, 64], "regularization": [0.1], "alpha": [1.0, 10.0]},
    "bpr": {"factors": [32, 64], "learning_rate": [0.05], "iterations": [100]},
}


def build_protocols(
    data_dir: str | Path,
    test_share: float = DEFAULT_TEST_SHARE,
    min_interactions: int = DEFAULT_MIN_INTERACTIONS,
    names: Sequence[str] = ("global", "per_user"),
) -> tuple[dict[str, Protocol], dict[str, Any]]:
    """Both protocols on the MovieLens ratings in ``data_dir``, with the catalog of ``u.item``."""
    interactions = read_interactions(data_dir)
    catalog = read_items(data_dir)["item_id"].to_numpy()
    builders = {
        "global": lambda: global_temporal_split(interactions, test_share, catalog=catalog),
        "per_user": lambda: per_user_temporal_split(interactions, test_share, min_interactions, catalog=catalog),
    }
    unknown = set(names) - set(builders)
    if unknown:
        raise ValueError(f"unknown protocol(s) {sorted(unknown)}; expected {sorted(builders)}")
    dataset = {
        "path": str(Path(data_dir).resolve()),
        "n_interactions": len(interactions),
        "n_users": int(interactions["user_id"].nunique()),
        "n_items": int(catalog.size),
    }
    return {name: builders[name]() for name in names}, dataset


def run_benchmark(
    data_dir: str | Path,
    extra_models: Mapping[str, ExtraModel] | None = None,
    config: PeerConfig | None = None,
    protocols: Sequence[str] = ("global", "per_user"),
    test_share: float = DEFAULT_TEST_SHARE,
    min_interactions: int = DEFAULT_MIN_INTERACTIONS,
) -> dict[str, Any]:
    """Run every peer (and ``extra_models``) on each protocol; return the JSON-ready results."""
    config = config or PeerConfig()
    extra_models = dict(extra_models or {})
    started = time.perf_counter()
    built, dataset = build_protocols(data_dir, test_share, min_interactions, protocols)
    results: dict[str, Any] = {
        "dataset": dataset,
        "k": config.k,
        "config": {"seed": config.seed, "window_days": config.window_days, "test_share": test_share,
                   "min_interactions": min_interactions, "num_threads": config.num_threads,
                   "grids": {name: dict(grid) for name, grid in config.grids.items()}},
        "protocols": {},
    }
    for name, protocol in built.items():
        console.print(f"[bold]> protocol {name}[/]: {protocol.stats['n_evaluated_users']} evaluated users, "
                      f"test share {protocol.stats['test_share']:.4f}")
        validation_started = time.perf_counter()
        validation = protocol.validation()
        validation_seconds = time.perf_counter() - validation_started
        models: dict[str, Any] = {}
        peer_results = run_peers(protocol, config, validation)
        for model, (result, seconds) in peer_results.items():
            models[model] = {
                "metrics": evaluate_lists(protocol, result.lists, config.k),
                "params": result.params,
                "seconds": round(seconds, 3),
                "selection_seconds": result.selection_seconds,
                "selection": result.selection,
            }
            console.print(f"  {model}: {seconds:.2f}s")
        all_lists = {model: result.lists for model, (result, _) in peer_results.items()}
        for model, fn in extra_models.items():
            model_started = time.perf_counter()
            lists = fn(protocol)
            seconds = time.perf_counter() - model_started
            models[model] = {"metrics": evaluate_lists(protocol, lists, config.k), "params": {},
                             "seconds": round(seconds, 3)}
            all_lists[model] = lists
            # A model may bring the lists of its parts (the platform: each candidate source alone).
            for part, part_lists in getattr(lists, "components", {}).items():
                models[f"{model} {part}"] = {"metrics": evaluate_lists(protocol, part_lists, config.k),
                                             "params": {}, "seconds": 0.0, "component_of": model}
                all_lists[f"{model} {part}"] = part_lists
            console.print(f"  {model}: {seconds:.2f}s")
        results["protocols"][name] = {
            # Per-user NDCG@k of every model, for summaries over several seeds (`summarize_seeds`).
            "user_ndcg": {model: {str(u): v for u, v in user_ndcg(protocol, lists, config.k).items()}
                          for model, lists in all_lists.items()},
            "lift_over_best_peer": lift_over_best_peer(models, PLATFORM_MODEL, config.k),
            "paired": paired_lifts(protocol, models, all_lists, PLATFORM_MODEL, config.k, config.seed),
            "stats": protocol.stats,
            "validation_stats": validation.stats,
            "validation_split_seconds": round(validation_seconds, 3),
            "models": models,
        }
    results["seconds_total"] = round(time.perf_counter() - started, 2)
    results["versions"] = _versions()
    return results


PLATFORM_MODEL = "two_stage (platform)"
BEFORE_MODEL = "two_stage (before #15)"
NOT_PEERS = ("random", PLATFORM_MODEL, BEFORE_MODEL)


def platform_model(data_dir: Path, work_dir: Path, seed: int = 7) -> ExtraModel:
    """The platform's two-stage recommender, run on each protocol's train part under `work_dir`
    (its lists carry each candidate source's own list as `components`)."""
    return platform_models(data_dir, work_dir, seed, before=False)[PLATFORM_MODEL]


def platform_models(data_dir: Path, work_dir: Path, seed: int = 7, before: bool = True) -> dict[str, ExtraModel]:
    """The platform (`PLATFORM_MODEL`) and, with `before`, the platform as trained before issue
    #15 (`BEFORE_MODEL`, see `before_issue_15`), both trained on one feature pipeline per protocol."""
    cache: dict[str, dict[str, Any]] = {}

    def lists_of(variant: str) -> ExtraModel:
        def rank(protocol: Protocol) -> Mapping[int, Sequence[int]]:
            from training.evaluation.two_stage_benchmark import (
                REQUEST_MODES,
                before_issue_15,
                movielens_train_config,
                two_stage_variants,
            )
            from training.spark import get_spark

            if protocol.name not in cache:
                root = work_dir / protocol.name
                shutil.rmtree(root, ignore_errors=True)
                mode = REQUEST_MODES.get(protocol.name, "daily")
                configs = {PLATFORM_MODEL: movielens_train_config(mode, seed)}
                if before:
                    configs[BEFORE_MODEL] = before_issue_15(movielens_train_config(mode, seed))
                cache[protocol.name] = two_stage_variants(protocol, data_dir, root, get_spark("movielens-benchmark"),
                                                          configs, seed=seed)
            return cache[protocol.name][variant]

        return rank

    return {PLATFORM_MODEL: lists_of(PLATFORM_MODEL), **({BEFORE_MODEL: lists_of(BEFORE_MODEL)} if before else {})}


def lift_over_best_peer(models: Mapping[str, Any], model: str, k: int) -> dict[str, Any] | None:
    """`model`'s NDCG@k against the best peer's (random and the model itself are not peers)."""
    if model not in models:
        return None
    metric = f"ndcg@{k}"
    peers = {name: entry["metrics"][metric] for name, entry in models.items()
             if name not in NOT_PEERS and "component_of" not in entry}
    best = max(peers, key=peers.get)
    ours = models[model]["metrics"][metric]
    return {"metric": metric, "model": model, "value": ours, "best_peer": best, "best_peer_value": peers[best],
            "lift": ours / peers[best] - 1 if peers[best] > 0 else None}


def paired_lifts(protocol: Protocol, models: Mapping[str, Any], lists: Mapping[str, Mapping[int, Sequence[int]]],
                 model: str, k: int, seed: int) -> dict[str, Any]:
    """`model`'s per-user NDCG@k against the best peer's and against the best of its own parts
    (`component_of`), as paired lifts with bootstrap CIs (`training.evaluation.paired`)."""
    if model not in models:
        return {}
    metric = f"ndcg@{k}"
    ours = user_ndcg(protocol, lists[model], k)
    out = {}
    groups = {"best_peer": [m for m in models if m not in NOT_PEERS and "component_of" not in models[m]],
              "best_own_source": [m for m in models if models[m].get("component_of") == model],
              "before_issue_15": [m for m in models if m == BEFORE_MODEL]}
    for label, names in groups.items():
        if not names:
            continue
        best = max(names, key=lambda m: models[m]["metrics"][metric])
        out[label] = {"model": best, **paired_lift(ours, user_ndcg(protocol, lists[best], k), seed=seed)}
    return out


def summarize_seeds(runs: Mapping[int, Mapping[str, Any]], k: int = 10) -> dict[str, Any]:
    """Per protocol, over the runs of several seeds: each model's mean NDCG@k, the best peer and the
    platform's best own source by that mean, the platform's ratio to each, and paired lifts with
    bootstrap CIs over users of the per-user NDCG averaged over the seeds."""
    metric = f"ndcg@{k}"
    first = next(iter(runs.values()))
    out: dict[str, Any] = {}
    for name in first["protocols"]:
        per_seed = [run["protocols"][name] for run in runs.values()]
        models = per_seed[0]["models"]
        mean = {model: float(np.mean([p["models"][model]["metrics"][metric] for p in per_seed]))
                for model in models if all(model in p["models"] for p in per_seed)}
        entry: dict[str, Any] = {"seeds": sorted(runs), f"mean_{metric}": mean}
        if PLATFORM_MODEL in mean:
            groups = {"best_peer": [m for m in mean if m not in NOT_PEERS and "component_of" not in models[m]],
                      "best_own_source": [m for m in mean if models[m].get("component_of") == PLATFORM_MODEL]}
            users = sorted(per_seed[0]["user_ndcg"][PLATFORM_MODEL])

            def averaged(model: str) -> dict[str, float]:
                return {u: float(np.mean([p["user_ndcg"][model][u] for p in per_seed])) for u in users}

            ours = averaged(PLATFORM_MODEL)
            for label, names in groups.items():
                if names:
                    best = max(names, key=mean.get)
                    entry[label] = {"model": best, "ratio": mean[PLATFORM_MODEL] / mean[best] if mean[best] else None,
                                    "paired": paired_lift(ours, averaged(best))}
        out[name] = entry
    return out


def print_seed_summary(summary: Mapping[str, Any], k: int = 10) -> None:
    for name, entry in summary.items():
        mean = entry[f"mean_ndcg@{k}"]
        console.print(f"[bold]{name}[/], mean of seeds {entry['seeds']}: platform NDCG@{k} "
                      f"{mean.get(PLATFORM_MODEL, float('nan')):.4f}")
        for label in ("best_peer", "best_own_source"):
            if label in entry:
                best, paired = entry[label], entry[label]["paired"]
                low, high = paired["lift_ci"] or (float("nan"), float("nan"))
                console.print(f"  vs {label.replace('_', ' ')} {best['model']} ({mean[best['model']]:.4f}): "
                              f"{best['ratio']:.3f}x, paired lift of the seed-averaged per-user NDCG "
                              f"{paired['lift']:+.1%} (95% CI {low:+.1%} .. {high:+.1%}, {paired['n_users']} users)")


def _versions() -> dict[str, str]:
    import implicit
    import scipy

    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "implicit": implicit.__version__}


def print_tables(results: Mapping[str, Any]) -> None:
    k = results["k"]
    for name, protocol in results["protocols"].items():
        stats = protocol["stats"]
        where = f"cut {stats['cut']}" if "cut" in stats else f"requests {stats['first_request'][:10]}..{stats['last_request'][:10]}"
        table = Table(title=f"MovieLens-100K, protocol {name} ({where}, test share {stats['test_share']:.3f}, "
                            f"{stats['n_evaluated_users']} users)")
        table.add_column("model")
        for metric in TABLE_METRICS:
            table.add_column(f"{metric}@{k}", justify="right")
        table.add_column("seconds", justify="right")
        table.add_column("selected", overflow="fold")
        for model, entry in protocol["models"].items():
            metrics = entry["metrics"]
            selected = ", ".join(f"{key}={value}" for key, value in entry["params"].items())
            table.add_row(model, *(f"{metrics[f'{m}@{k}']:.4f}" for m in TABLE_METRICS),
                          f"{entry['seconds']:.2f}", selected)
        console.print(table)
        lift = protocol.get("lift_over_best_peer")
        if lift and lift["lift"] is not None:
            console.print(f"{lift['model']} {lift['metric']} {lift['value']:.4f} vs best peer {lift['best_peer']} "
                          f"{lift['best_peer_value']:.4f}: [bold]{lift['lift']:+.1%}[/]")
        for label, paired in (protocol.get("paired") or {}).items():
            if paired.get("lift") is not None and paired.get("lift_ci"):
                low, high = paired["lift_ci"]
                console.print(f"  paired vs {label.replace('_', ' ')} {paired['model']}: lift {paired['lift']:+.1%} "
                              f"(95% CI {low:+.1%} .. {high:+.1%}, {paired['n_users']} users, better for "
                              f"{paired['share_better']:.0%}, worse for {paired['share_worse']:.0%})")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json_atomic(data: Mapping[str, Any], path: str | Path) -> Path:
    """The results as JSON, written atomically (numpy scalars and arrays as plain numbers)."""
    return atomic.write_json_atomic(data, path, default=_json_default)


def load_extra_models(specs: Sequence[str]) -> dict[str, ExtraModel]:
    """``["name=package.module:function", ...]`` -> ``{name: function}``."""
    models: dict[str, ExtraModel] = {}
    for spec in specs:
        name, sep, target = spec.partition("=")
        module_name, colon, attribute = target.partition(":")
        if not (sep and colon and name and module_name and attribute):
            raise typer.BadParameter(f"{spec!r}: expected NAME=module:function")
        models[name] = getattr(importlib.import_module(module_name), attribute)
    return models


def main(
    data: Optional[Path] = typer.Option(None, help="MovieLens-100K folder (default: $RECSYS_MOVIELENS_DIR or "
                                                   "../shared/datasets/ml-100k from the repo root)"),
    out: Path = typer.Option(REPO_ROOT / "reports" / "benchmarks" / "movielens.json", help="JSON output"),
    k: int = typer.Option(10, help="cut-off K of the metrics"),
    seed: list[int] = typer.Option([42], help="seed of random, ALS, BPR and the platform; repeat it to run "
                                              "several seeds and print their means"),
    window_days: float = typer.Option(30.0, help="window of recent popularity (days before the request)"),
    protocol: list[str] = typer.Option(["global", "per_user"], help="protocols to run"),
    quick: bool = typer.Option(False, help="tiny hyper-parameter grids (smoke test)"),
    extra: list[str] = typer.Option([], help="another model, NAME=module:function with function(protocol) -> "
                                             "{user_id: [item_id, ...]}; repeatable"),
    platform_run: bool = typer.Option(True, "--platform/--no-platform",
                                      help="also run the platform's two-stage recommender (minutes per protocol)"),
    compare_before: bool = typer.Option(True, "--before/--no-before",
                                        help="also train the platform as it was before issue #15 (same features)"),
    work_dir: Path = typer.Option(REPO_ROOT / "data" / "benchmarks" / "movielens",
                                  help="where the platform runs keep their data, bundles and reports"),
) -> None:
    data_dir = data if data is not None else movielens_dir()
    if not (data_dir / "u.data").is_file():
        console.print(f"[red]MovieLens-100K not found in {data_dir}[/] (download it from GroupLens; "
                      "it is not redistributed here)")
        raise typer.Exit(2)
    runs: dict[int, dict[str, Any]] = {}
    for one_seed in seed:
        config = PeerConfig(k=k, seed=one_seed, window_days=window_days,
                            grids=dict(QUICK_GRIDS if quick else DEFAULT_GRIDS))
        extra_models = load_extra_models(extra)
        if platform_run:
            extra_models.update(platform_models(data_dir, work_dir, one_seed, before=compare_before))
        runs[one_seed] = run_benchmark(data_dir, extra_models=extra_models, config=config, protocols=protocol)
        print_tables(runs[one_seed])
    if len(runs) == 1:
        results = runs[seed[0]]
    else:
        results = {"seeds": {str(s): run for s, run in runs.items()}, "summary": summarize_seeds(runs, k),
                   "seconds_total": round(sum(run["seconds_total"] for run in runs.values()), 2)}
        print_seed_summary(results["summary"], k)
    written = write_json_atomic(results, out)
    console.print(f"{results['seconds_total']:.1f}s in all; results in {written}")


if __name__ == "__main__":
    typer.run(main)
