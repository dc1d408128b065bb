"""benchmarks/movielens.py end to end on a small fake MovieLens folder (GroupLens format)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from training.data.movielens import GENRES
from training.evaluation.peers import PeerConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
DAY = 86_400
T0 = 880_000_000


def oracle_lists(protocol):
    """Every evaluated user's held-out items (loaded by the CLI through --extra)."""
    return {u: sorted(items) for u, items in protocol.relevant.items()}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("movielens_benchmark", REPO_ROOT / "benchmarks" / "movielens.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fake_ml(tmp_path_factory) -> Path:
    """80 users x 40 items in two taste clusters; each user rates 12 items over ~60 days."""
    folder = tmp_path_factory.mktemp("ml-fake")
    rng = np.random.default_rng(1)
    n_users, n_items = 80, 40
    lines = []
    for user in range(1, n_users + 1):
        weight = np.where(np.arange(n_items) % 2 == user % 2, 1.0, 0.05)
        items = rng.choice(n_items, size=12, replace=False, p=weight / weight.sum()) + 1
        start = T0 + int(rng.integers(0, 40)) * DAY
        lines += [f"{user}\t{item}\t{int(rng.integers(1, 6))}\t{start + step * DAY // 2 + user}"
                  for step, item in enumerate(items)]
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    (folder / "u.user").write_text("".join(f"{u}|30|F|other|00000\n" for u in range(1, n_users + 1)))
    genre_flags = "|".join(["0"] * (len(GENRES) - 1) + ["1"])
    (folder / "u.item").write_text(
        "".join(f"{i}|Film {i} (1997)|01-Jan-1997||http://x|{genre_flags}\n" for i in range(1, n_items + 1)))
    return folder


def test_run_benchmark_with_an_extra_model(bench, fake_ml, tmp_path):
    calls = []

    def oracle(protocol):
        calls.append(protocol.name)
        return {u: sorted(items) for u, items in protocol.relevant.items()}

    def shows_seen_items(protocol):
        return {u: sorted(protocol.exclude[u]) for u in protocol.users}

    grids = {"item_knn": {"neighbours": [5, None]}, "als": {"factors": [4, 8], "regularization": [0.1], "alpha": [1.0]},
             "bpr": {"factors": [4], "learning_rate": [0.05], "iterations": [20, 50]}}
    results = bench.run_benchmark(fake_ml, extra_models={"oracle": oracle, "seen": shows_seen_items},
                                  config=PeerConfig(grids=grids))
    assert calls == ["global", "per_user"]
    assert results["dataset"]["n_interactions"] == 80 * 12 and results["dataset"]["n_items"] == 40
    for name, protocol in results["protocols"].items():
        models = protocol["models"]
        assert list(models) == ["random", "popularity", "recent_popularity_30d", "item_knn", "als", "bpr",
                                "oracle", "seen"]
        users = protocol["stats"]["n_evaluated_users"]
        assert users > 0 and all(entry["metrics"]["users"] == users for entry in models.values())
        assert models["oracle"]["metrics"]["ndcg@10"] == pytest.approx(1.0)
        assert models["seen"]["metrics"]["ndcg@10"] == 0.0 and models["seen"]["metrics"]["excluded_in_lists"] > 0
        assert models["random"]["metrics"]["excluded_in_lists"] == 0
        assert len(models["als"]["selection"]) == 2 and models["als"]["params"]["factors"] in (4, 8)
        assert len(models["bpr"]["selection"]) == 2 and models["bpr"]["params"]["iterations"] in (20, 50)
        assert models["als"]["metrics"]["ndcg@10"] > models["random"]["metrics"]["ndcg@10"]
        assert protocol["validation_stats"]["n_train"] + protocol["validation_stats"]["n_test"] == protocol["stats"]["n_train"]
    assert results["protocols"]["global"]["stats"]["cut"].endswith("T00:00:00+00:00")

    out = bench.write_json_atomic(results, tmp_path / "out" / "movielens.json")
    assert json.loads(out.read_text())["protocols"]["per_user"]["models"]["oracle"]["metrics"]["hitrate@10"] == 1.0
    assert [p.name for p in out.parent.iterdir()] == ["movielens.json"]  # no temp file left behind
    bench.print_tables(results)


def test_cli_writes_json(bench, fake_ml, tmp_path):
    import typer

    app = typer.Typer()
    app.command()(bench.main)
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["--data", str(fake_ml), "--out", str(out), "--quick", "--protocol", "per_user",
                                      "--no-platform", "--extra", f"oracle={__name__}:oracle_lists"])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert list(written["protocols"]) == ["per_user"] and written["k"] == 10
    assert written["protocols"]["per_user"]["models"]["oracle"]["metrics"]["ndcg@10"] == pytest.approx(1.0)
    missing = CliRunner().invoke(app, ["--data", str(tmp_path / "none"), "--out", str(out)])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_lift_over_best_peer_ignores_random_and_the_model_itself(bench):
    models = {name: {"metrics": {"ndcg@10": value}} for name, value in
              {"random": 0.5, "popularity": 0.10, "als": 0.20, bench.PLATFORM_MODEL: 0.23}.items()}
    lift = bench.lift_over_best_peer(models, bench.PLATFORM_MODEL, 10)
    assert lift["best_peer"] == "als" and lift["lift"] == pytest.approx(0.15)
    assert bench.lift_over_best_peer({"als": models["als"]}, bench.PLATFORM_MODEL, 10) is None


def test_a_models_parts_get_rows_and_paired_lifts_with_cis(bench, fake_ml):
    class WithParts(dict):
        components: dict

    def platform(protocol):
        oracle = {u: sorted(items) for u, items in protocol.relevant.items()}
        lists = WithParts(oracle)
        # A part that finds only each user's first held-out item, behind nine misses.
        misses = {u: [i for i in protocol.items.tolist() if i not in items and i not in protocol.exclude[u]][:9]
                  for u, items in protocol.relevant.items()}
        lists.components = {"source: half": {u: misses[u] + sorted(items)[:1] for u, items in protocol.relevant.items()}}
        return lists

    grids = {"item_knn": {"neighbours": [5]}, "als": {"factors": [4], "regularization": [0.1], "alpha": [1.0]},
             "bpr": {"factors": [4], "learning_rate": [0.05], "iterations": [20]}}
    results = bench.run_benchmark(fake_ml, extra_models={bench.PLATFORM_MODEL: platform},
                                  config=PeerConfig(grids=grids), protocols=("per_user",))
    protocol = results["protocols"]["per_user"]
    part = f"{bench.PLATFORM_MODEL} source: half"
    assert protocol["models"][part]["component_of"] == bench.PLATFORM_MODEL
    assert protocol["lift_over_best_peer"]["best_peer"] != part  # a part is not a peer
    own, peer = protocol["paired"]["best_own_source"], protocol["paired"]["best_peer"]
    assert own["model"] == part and peer["model"] in protocol["models"]
    assert own["ours"] == pytest.approx(1.0) and own["lift"] > 0 and own["lift_ci"][0] > 0
    assert own["share_better"] == 1.0 and own["diff_ci"][0] > 0
    bench.print_tables(results)


def test_several_seeds_are_summarised_by_their_means_and_a_pooled_paired_lift(bench, fake_ml, tmp_path):
    import typer

    app = typer.Typer()
    app.command()(bench.main)
    out = tmp_path / "seeds.json"
    result = CliRunner().invoke(app, ["--data", str(fake_ml), "--out", str(out), "--quick", "--protocol", "per_user",
                                      "--no-platform", "--seed", "1", "--seed", "2"])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert sorted(written["seeds"]) == ["1", "2"]
    runs = {int(s): run for s, run in written["seeds"].items()}
    random_means = [run["protocols"]["per_user"]["models"]["random"]["metrics"]["ndcg@10"] for run in runs.values()]
    mean = written["summary"]["per_user"]["mean_ndcg@10"]
    assert mean["random"] == pytest.approx(np.mean(random_means)) and random_means[0] != random_means[1]

    # With a platform: the ratio to the best peer by mean, and the paired lift of the seed-averaged
    # per-user NDCG (the platform ranks every user's held-out items first: better for everybody).
    for run in runs.values():
        protocol = run["protocols"]["per_user"]
        perfect = {u: 1.0 for u in protocol["user_ndcg"]["random"]}
        protocol["user_ndcg"][bench.PLATFORM_MODEL] = perfect
        protocol["models"][bench.PLATFORM_MODEL] = {"metrics": {"ndcg@10": 1.0}}
    summary = bench.summarize_seeds(runs)["per_user"]
    peers = {m: v for m, v in summary["mean_ndcg@10"].items() if m not in ("random", bench.PLATFORM_MODEL)}
    best = max(peers, key=peers.get)
    assert summary["best_peer"]["model"] == best and summary["best_peer"]["ratio"] == pytest.approx(1 / peers[best])
    paired = summary["best_peer"]["paired"]
    assert paired["ours"] == pytest.approx(1.0) and paired["theirs"] == pytest.approx(peers[best])
    assert paired["lift_ci"][0] > 0 and "best_own_source" not in summary
    bench.print_seed_summary(bench.summarize_seeds(runs))


def test_movielens_configs_per_request_mode_and_before_issue_15():
    from training.evaluation.two_stage_benchmark import before_issue_15, movielens_train_config

    session, daily = movielens_train_config("session", 3), movielens_train_config("daily", 3)
    assert (session.candidates.n_ann, session.candidates.relative_scores) == (0, True)
    assert session.ranker_grid == {"objective": ["lambdarank", "rank_xendcg"]}
    assert (daily.candidates.n_ann, daily.candidates.relative_scores, daily.ranker_grid) == (200, False, None)
    assert session.ranker.seed == session.als.seed == session.sasrec.seed == 3
    assert daily.sasrec is None  # SASRec lost on the global validation split
    before = before_issue_15(movielens_train_config("session", 3))
    assert (before.als, before.sasrec, before.source_refit_days, before.refit_ranker) == (None, None, None, False)
    assert (before.candidates.n_ann, before.candidates.relative_scores, before.ranker_grid) == (200, False, None)
