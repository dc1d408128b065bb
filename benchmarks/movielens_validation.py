"""Platform configurations compared on MovieLens-100K *validation* splits (never the test part).

For each protocol of the benchmark (`benchmarks/movielens.py`), `Protocol.validation()` applies
the same protocol again inside the protocol's train part; the platform runs on that validation
protocol's train part with each named configuration (all sharing one feature pipeline and
two-tower, see `two_stage_variants`), and every variant's list and each of its candidate sources
alone are scored on the validation protocol's held-out part. The test interactions never reach
these runs, so a configuration chosen from this table is chosen on validation only.

    .venv/bin/python benchmarks/movielens_validation.py --data ../shared/datasets/ml-100k \
        --variant current --variant no_two_tower --out /tmp/validation.json
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from core.settings import REPO_ROOT
from training.data.movielens import movielens_dir
from training.evaluation.protocols import evaluate_lists
from training.pipeline import TrainConfig

console = Console(width=140)


def _current(mode: str, seed: int) -> TrainConfig:
    from training.evaluation.two_stage_benchmark import movielens_train_config

    return movielens_train_config(mode, seed)


def _before(mode: str, seed: int) -> TrainConfig:
    from training.evaluation.two_stage_benchmark import before_issue_15

    return before_issue_15(_current(mode, seed))


def _no_two_tower(mode: str, seed: int) -> TrainConfig:
    """The two-tower proposes no candidates (its similarity stays a feature of every candidate)."""
    config = _current(mode, seed)
    config.candidates.n_ann = 0
    return config


def _no_two_tower_relative(mode: str, seed: int) -> TrainConfig:
    config = _no_two_tower(mode, seed)
    config.candidates.relative_scores = True
    return config


def _relative(mode: str, seed: int) -> TrainConfig:
    config = _current(mode, seed)
    config.candidates.relative_scores = True
    return config


def _no_two_tower_relative_grid(mode: str, seed: int) -> TrainConfig:
    config = _no_two_tower_relative(mode, seed)
    config.ranker_grid = {"num_leaves": [7, 31], "objective": ["lambdarank", "rank_xendcg"]}
    return config


def _candidate(mode: str, seed: int) -> TrainConfig:
    """No two-tower candidates, relative scores, the objective chosen on the pipeline's own
    validation requests, and (daily requests) a week of labels per request."""
    config = _no_two_tower_relative(mode, seed)
    config.ranker_grid = {"objective": ["lambdarank", "rank_xendcg"]}
    config.label_days = 7
    return config


def _label_days(days: int) -> Callable[[str, int], TrainConfig]:
    def make(mode: str, seed: int) -> TrainConfig:
        """The current configuration with `days` days of labels per request."""
        config = _current(mode, seed)
        config.label_days = days
        return config

    return make


def _item_age(mode: str, seed: int) -> TrainConfig:
    """The current configuration with the items' age at the request as a ranker feature."""
    config = _current(mode, seed)
    config.candidates.item_age = True
    return config


def _wide_ranker_grid(mode: str, seed: int) -> TrainConfig:
    """The current configuration with the ranker's tree size and learning rate also chosen on the
    pipeline's own validation requests."""
    config = _current(mode, seed)
    config.ranker_grid = {**(config.ranker_grid or {}), "num_leaves": [7, 15, 31], "learning_rate": [0.02, 0.05]}
    return config


def _sasrec(mode: str, seed: int) -> TrainConfig:
    """The current configuration with the SASRec source and ranker features."""
    from training.retrieval.sasrec import SASRecConfig

    config = _current(mode, seed)
    config.sasrec = SASRecConfig(seed=seed)
    return config


def _no_sasrec(mode: str, seed: int) -> TrainConfig:
    """The current configuration without the SASRec source and ranker features."""
    config = _current(mode, seed)
    config.sasrec = None
    return config


def _item_knn(neighbours: int) -> Callable[[str, int], TrainConfig]:
    def make(mode: str, seed: int) -> TrainConfig:
        """The current configuration with the item-kNN source and ranker features."""
        config = _current(mode, seed)
        config.item_knn_neighbours = neighbours
        return config

    return make


def _content(mode: str, seed: int) -> TrainConfig:
    """The current configuration with the content source and ranker features."""
    config = _current(mode, seed)
    config.content_dim = 64
    return config


def _item_knn_content(mode: str, seed: int) -> TrainConfig:
    config = _item_knn(100)(mode, seed)
    config.content_dim = 64
    return config


def _dcn(mode: str, seed: int) -> TrainConfig:
    """The current configuration with a DCN-v2 ranker trained beside LightGBM, the better one on
    the pipeline's own validation requests shipped."""
    config = _current(mode, seed)
    config.ranker_kinds = ("lightgbm", "dcn")
    config.dcn.seed = seed
    return config


VARIANTS: dict[str, Callable[[str, int], TrainConfig]] = {
    "current": _current, "before_issue_15": _before, "no_two_tower": _no_two_tower, "relative": _relative,
    "no_two_tower_relative": _no_two_tower_relative, "no_two_tower_relative_grid": _no_two_tower_relative_grid,
    "candidate": _candidate, "label_days_7": _label_days(7), "label_days_28": _label_days(28),
    "item_age": _item_age, "wide_ranker_grid": _wide_ranker_grid, "sasrec": _sasrec,
    "no_sasrec": _no_sasrec, "item_knn": _item_knn(100), "item_knn_50": _item_knn(50),
    "content": _content, "item_knn_content": _item_knn_content, "dcn": _dcn,
}


def validation_table(data_dir: Path, work_dir: Path, variants: dict[str, TrainConfig | Callable[[str, int], TrainConfig]],
                     protocols: list[str], seed: int, k: int = 10) -> dict[str, Any]:
    from benchmarks.movielens import build_protocols
    from training.evaluation.two_stage_benchmark import REQUEST_MODES, two_stage_variants
    from training.spark import get_spark

    built, _ = build_protocols(data_dir, names=protocols)
    out: dict[str, Any] = {"seed": seed, "k": k, "protocols": {}}
    for name, protocol in built.items():
        validation = protocol.validation()
        mode = REQUEST_MODES.get(name, "daily")
        configs = {variant: (make(mode, seed) if callable(make) else make) for variant, make in variants.items()}
        root = work_dir / f"{name}_validation"
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        lists = two_stage_variants(validation, data_dir, root, get_spark("movielens-validation"), configs, seed=seed)
        rows = {}
        for variant, ranked in lists.items():
            rows[variant] = evaluate_lists(validation, ranked, k)[f"ndcg@{k}"]
            for part, part_lists in getattr(ranked, "components", {}).items():
                rows[f"{variant} {part}"] = evaluate_lists(validation, part_lists, k)[f"ndcg@{k}"]
        out["protocols"][name] = {"validation_stats": validation.stats, f"ndcg@{k}": rows,
                                  "seconds": round(time.perf_counter() - started, 1)}
        console.print(f"[bold]{name}[/] validation ({validation.stats['n_evaluated_users']} users), NDCG@{k}:")
        for row, value in rows.items():
            console.print(f"  {row:60s} {value:.4f}")
    return out


def main(
    data: Optional[Path] = typer.Option(None, help="MovieLens-100K folder"),
    out: Path = typer.Option(..., help="JSON output"),
    variant: list[str] = typer.Option(["current"], help=f"configurations to compare: {', '.join(VARIANTS)}, or "
                                                         "module:function with function(request_mode, seed) -> TrainConfig"),
    protocol: list[str] = typer.Option(["global", "per_user"], help="protocols"),
    seed: int = typer.Option(42, help="seed of the platform run"),
    work_dir: Path = typer.Option(REPO_ROOT / "data" / "benchmarks" / "movielens_validation", help="work folder"),
) -> None:
    import importlib

    from benchmarks.movielens import write_json_atomic

    chosen = {}
    for name in variant:
        if name in VARIANTS:
            chosen[name] = VARIANTS[name]
        else:
            module, _, function = name.partition(":")
            chosen[name] = getattr(importlib.import_module(module), function)
    results = validation_table(data if data is not None else movielens_dir(), work_dir, chosen, protocol, seed)
    console.print(f"results in {write_json_atomic(results, out)}")


if __name__ == "__main__":
    typer.run(main)
