import numpy as np
import pandas as pd
import pytest

from core.inference.frame import fit_feature_spec
from core.inference.ranker import load_ranker, save_ranker, score
from core.metrics import ranking_metrics
from training.ranking.lgbm_ranker import (
    RankerConfig,
    plot_feature_importance,
    plot_ranker_curves,
    refit_ranker,
    train_ranker,
)

INFORMATIVE = "item_daily__ctr_30d"  # drives the synthetic label most (see conftest.py)
CONFIG = RankerConfig(
    learning_rate=0.1,
    num_leaves=15,
    min_data_in_leaf=20,
    num_boost_round=120,
    early_stopping_rounds=15,
)


@pytest.fixture(scope="module")
def trained(ranking_splits):
    spec = fit_feature_spec(ranking_splits["train"])
    return train_ranker(ranking_splits["train"], ranking_splits["val"], spec, CONFIG)


def ndcg_at_10(rows: pd.DataFrame, scores: np.ndarray) -> float:
    """Rows are keyed by position so duplicate item ids inside a request cannot collide."""
    rows = rows.assign(score=scores, key=np.arange(len(rows)))
    recommended = {
        request: group.sort_values("score", ascending=False)["key"].tolist()
        for request, group in rows.groupby("request_id")
    }
    relevant = {
        request: dict(zip(group["key"], group["label"]))
        for request, group in rows.groupby("request_id")
    }
    return ranking_metrics(recommended, relevant, ks=[10])["ndcg@10"]


def test_ranker_beats_random_and_finds_the_informative_feature(trained, ranking_splits):
    test = ranking_splits["test"]
    model_ndcg = ndcg_at_10(test, score(trained.booster, test, trained.spec))
    random_ndcg = ndcg_at_10(test, np.random.default_rng(0).random(len(test)))
    assert model_ndcg > random_ndcg + 0.25, (model_ndcg, random_ndcg)
    assert trained.feature_importance["feature"].iloc[0] == INFORMATIVE
    assert trained.feature_importance["gain"].is_monotonic_decreasing


def test_training_history_and_early_stopping(trained):
    assert set(trained.evals_result) == {"train", "val"}
    val_ndcg10 = trained.evals_result["val"]["ndcg@10"]
    assert 1 <= trained.best_iteration <= len(val_ndcg10) <= CONFIG.num_boost_round
    assert trained.best_score == pytest.approx(max(val_ndcg10))
    assert val_ndcg10[trained.best_iteration - 1] == pytest.approx(trained.best_score)


def test_text_round_trip_gives_identical_scores(trained, ranking_splits, tmp_path):
    path = save_ranker(trained.booster, tmp_path / "ranker.txt")
    assert path.read_text().startswith("tree")
    assert [p.name for p in tmp_path.iterdir()] == ["ranker.txt"]  # no temp file left behind
    loaded = load_ranker(path)
    test = ranking_splits["test"].iloc[:200]
    np.testing.assert_array_equal(
        score(loaded, test, trained.spec), score(trained.booster, test, trained.spec)
    )
    # an unseen device value must not break scoring
    unseen = test.assign(device="smart-tv")
    assert np.isfinite(score(loaded, unseen, trained.spec)).all()


def test_labels_outside_the_gains_are_rejected(ranking_splits):
    train = ranking_splits["train"].assign(label=5)
    spec = fit_feature_spec(ranking_splits["train"])
    with pytest.raises(ValueError, match="label"):
        train_ranker(train, ranking_splits["val"], spec, CONFIG)


def test_plots_are_pngs(trained, tmp_path):
    for path in (
        plot_feature_importance(trained.feature_importance, tmp_path / "importance.png", top=5),
        plot_ranker_curves(trained.evals_result, tmp_path / "curves.png"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scoring_from_arrays_equals_the_pandas_categorical_path(trained, ranking_splits):
    from core.inference.frame import model_array, to_model_matrix

    test = ranking_splits["test"].iloc[:300].copy()
    test.loc[test.index[:20], "device"] = "smart-tv"  # unseen category
    test.loc[test.index[20:40], "device"] = None  # missing category
    test.loc[test.index[40:60], "item_daily__popularity_7d"] = np.nan  # count-like: 0
    test.loc[test.index[60:80], "user_profile__age"] = np.nan  # stays missing
    expected = trained.booster.predict(to_model_matrix(test, trained.spec))
    np.testing.assert_array_equal(score(trained.booster, test, trained.spec), expected)
    columns = {c: test[c].to_numpy() for c in test.columns}  # serving passes arrays, not a frame
    columns["device"] = test["device"].astype(object).to_numpy()
    np.testing.assert_array_equal(score(trained.booster, columns, trained.spec), expected)
    # serving's request times are a DatetimeIndex (hour and weekday from the epoch, not pandas)
    for zone in ("UTC", "Asia/Kolkata"):
        columns["event_timestamp"] = pd.DatetimeIndex(test["event_timestamp"]).tz_convert(zone)
        np.testing.assert_array_equal(score(trained.booster, columns, trained.spec), expected)
    matrix = to_model_matrix(test, trained.spec)
    codes = model_array(test, trained.spec)
    for j, column in enumerate(trained.spec.columns):
        want = (matrix[column].cat.codes.replace(-1, np.nan) if column in trained.spec.categorical
                else matrix[column]).to_numpy(dtype=np.float64)
        np.testing.assert_array_equal(codes[:, j], want, err_msg=column)


def test_one_thread_scores_equal_the_default_threads(trained, ranking_splits):
    """Serving predicts with its thread budget (`num_threads=1`): the scores must not change."""
    from core.inference.frame import model_array
    from core.inference.ranker import predict_matrix

    matrix = model_array(ranking_splits["test"].iloc[:500], trained.spec)
    default = predict_matrix(trained.booster, matrix)
    assert len(np.unique(default)) > 10
    np.testing.assert_array_equal(predict_matrix(trained.booster, matrix, num_threads=1), default)
    assert predict_matrix(trained.booster, matrix[:0], num_threads=1).shape == (0,)


def test_refit_keeps_the_validated_rounds_and_learns_from_the_added_rows(trained, ranking_splits):
    both = pd.concat([ranking_splits["train"], ranking_splits["val"]], ignore_index=True)
    refit = refit_ranker(both, trained)
    assert refit.booster.num_trees() == trained.best_iteration == refit.best_iteration
    assert refit.best_score == trained.best_score and refit.spec == trained.spec
    test = ranking_splits["test"]
    validated = ndcg_at_10(test, score(trained.booster, test, trained.spec))
    refitted = ndcg_at_10(test, score(refit.booster, test, refit.spec))
    assert refitted > 0.5 and abs(refitted - validated) < 0.05  # same model class, more data
    assert refit_ranker(both, trained, rounds=3).booster.num_trees() == 3


def test_select_ranker_keeps_the_grid_point_with_the_best_validation_score(ranking_splits):
    from training.ranking.lgbm_ranker import select_ranker

    spec = fit_feature_spec(ranking_splits["train"])
    base = RankerConfig(num_boost_round=40, early_stopping_rounds=10, num_leaves=7)
    grid = {"num_leaves": [3, 15], "min_data_in_leaf": [20, 100]}
    best, trace = select_ranker(ranking_splits["train"], ranking_splits["val"], spec, base, grid)
    assert [t["params"] for t in trace] == [{"num_leaves": 3, "min_data_in_leaf": 20},
                                            {"num_leaves": 3, "min_data_in_leaf": 100},
                                            {"num_leaves": 15, "min_data_in_leaf": 20},
                                            {"num_leaves": 15, "min_data_in_leaf": 100}]
    scores = [t["ndcg@10"] for t in trace]
    chosen = trace[int(np.argmax(scores))]["params"]
    assert (best.config.num_leaves, best.config.min_data_in_leaf) == (chosen["num_leaves"], chosen["min_data_in_leaf"])
    assert round(best.best_score, 5) == max(scores)
    alone, alone_trace = select_ranker(ranking_splits["train"], ranking_splits["val"], spec, base, None)
    assert alone.config == base and len(alone_trace) == 1 and alone_trace[0]["params"] == {}
