"""Content vectors from item attributes, and the content candidate source that reaches cold items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.inference.ann_index import build_index
from core.inference.baselines import CoVisitationRecommender, TrendingRecommender
from core.inference.candidates import (
    CONTENT_FEATURES,
    CONTENT_RELATIVE_FEATURES,
    CandidateConfig,
    CandidateGenerator,
    primary_source,
)
from core.inference.content import N_FEATURES, ContentEncoder, ContentScorer, item_tokens
from core.inference.two_tower import UserFeatures

ITEMS = pd.DataFrame({
    "item_id": [10, 11, 12, 13, 14, 15, 16, 17],
    "category": ["SciFi", "SciFi", "SciFi", "Romance", "Romance", "Romance", "Horror", "SciFi"],
    "title": ["Star Wars (1977)", "Star Trek (1979)", "Alien (1979)", "Casablanca (1942)", "Roman Holiday (1953)",
              "Notting Hill (1999)", "Scream (1996)", "Star Wars: Episode I (1999)"],
    "price": [9.0, 9.0, 8.0, 3.0, 3.0, 12.0, 5.0, 20.0],
})


def test_tokens_are_title_words_category_price_band_and_decade():
    assert item_tokens("SciFi", "Star Wars (1977)", 9.0) == ["star", "wars", "1977", "decade=1970s",
                                                             "category=scifi", "price_band=3"]
    assert item_tokens(None, None, None) == []
    assert item_tokens("", float("nan"), float("nan")) == []


def test_vectors_put_look_alike_items_together_and_are_deterministic():
    encoder = ContentEncoder.fit(ITEMS, dim=4)
    vectors = encoder.encode(ITEMS)
    assert vectors.shape == (8, 4) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    similarity = vectors @ vectors[0]
    assert similarity[1] > similarity[3] and similarity[2] > similarity[4]  # sci-fi closer than romance
    again = ContentEncoder.fit(ITEMS, dim=4)
    np.testing.assert_array_equal(again.encode(ITEMS), vectors)
    assert np.all(encoder.encode(pd.DataFrame({"title": [None]})) == 0)  # no tokens: a zero vector


def test_an_item_unknown_to_the_encoder_is_encoded_near_its_look_alikes():
    known = ITEMS.iloc[:7]  # "Star Wars: Episode I" arrives after the encoder was fitted
    scorer = ContentScorer.fit(ITEMS, known=np.arange(8) < 7, dim=4)
    np.testing.assert_allclose(scorer.item_vectors, scorer.encoder.encode(ITEMS), rtol=1e-6)
    scores = scorer.scores(scorer.profiles(np.array([[0, 1]])))[0]  # a user of Star Wars and Star Trek
    assert scores[7] > scores[[3, 4, 5, 6]].max()
    assert np.all(ContentEncoder.fit(known, dim=4).encode(ITEMS.iloc[7:]) == scorer.item_vectors[7:])


def test_profiles_use_the_most_recent_seeds_and_skip_padding():
    scorer = ContentScorer(ContentEncoder.fit(ITEMS, dim=4).encode(ITEMS))
    padding = len(ITEMS)
    one = scorer.profiles(np.array([[3, 0, 1, padding]]), seeds=1)
    np.testing.assert_allclose(one[0], scorer.item_vectors[3], rtol=1e-6)
    assert np.all(scorer.profiles(np.array([[padding, padding]])) == 0)
    assert np.all(scorer.scores(scorer.profiles(np.array([[padding]]))) == 0)


def test_encoder_and_scorer_refuse_inconsistent_arrays():
    with pytest.raises(ValueError, match="idf"):
        ContentEncoder(np.ones(3), np.zeros((2, N_FEATURES)))
    with pytest.raises(ValueError, match="components"):
        ContentEncoder(np.ones(N_FEATURES), np.full((2, N_FEATURES), np.nan))
    with pytest.raises(ValueError, match="dimensions"):
        ContentScorer(np.zeros((3, 5)), ContentEncoder(np.ones(N_FEATURES), np.zeros((2, N_FEATURES))))


class _Encoder:
    def user_embeddings(self, users):
        return np.ones((len(users), 4), dtype=np.float32)


def test_generator_proposes_a_cold_item_whose_content_fits_the_history():
    n_items = len(ITEMS)
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 20, 200), rng.integers(0, 7, 200)  # nobody interacted with item 7
    trending = TrendingRecommender(n_items).fit(users, items, np.zeros(200, dtype=np.int64), as_of=1)
    covisit = CoVisitationRecommender(n_items).fit(users, items, np.zeros(200, dtype=np.int64))
    available = np.zeros(n_items, dtype=np.int64)
    available[7] = 50  # created at t=50, after the sources were fitted
    content = ContentScorer.fit(ITEMS, known=available < 1, dim=4)
    emb = np.eye(n_items, 4, dtype=np.float32) + 0.01
    config = CandidateConfig(n_ann=1, n_trending=2, n_covisit=2, n_content=2, relative_scores=True)
    generator = CandidateGenerator(_Encoder(), emb, build_index(emb), available, trending, covisit, config,
                                   content=content)
    assert generator.sources[-1] == "content"
    assert generator.feature_columns[-4:] == [*CONTENT_FEATURES, *CONTENT_RELATIVE_FEATURES]
    users_in = UserFeatures(np.array([0, 0]), np.array([[0, 1, n_items], [0, 1, n_items]]),
                            np.zeros((2, 0), np.float32))
    frame = generator.generate(users_in, np.array([40, 60]))
    before, after = frame[frame.position == 0], frame[frame.position == 1]
    assert 7 not in set(before.item_idx)  # not created yet
    cold = after.set_index("item_idx").loc[7]
    # proposed by content alone (nobody interacted with it), second only to the other 1979 sci-fi film
    assert cold.from_content == 1 and cold.content_rank == 2 and cold.from_covisit == 0 and cold.trending_score == 0
    scores = content.scores(content.profiles(np.array([[0, 1]])))[0]
    np.testing.assert_allclose(after.content_score, scores[after.item_idx], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after.content_score_gap, after.content_score - after.content_score.max())
    only_content = (after.from_content == 1) & (after.from_two_tower + after.from_trending + after.from_covisit == 0)
    assert set(primary_source(after)[only_content.to_numpy()]) == {"content"}


def test_the_bundles_content_files_load_back_and_are_checked(tmp_path):
    from core.bundle import CONTENT_ENCODER, CONTENT_INDEX, CONTENT_VECTORS, BundleError, _load_content
    from core.inference.ann_index import build_index, save_index

    scorer = ContentScorer.fit(ITEMS, known=np.ones(len(ITEMS), dtype=bool), dim=4)
    np.save(tmp_path / CONTENT_VECTORS, scorer.item_vectors)
    save_index(scorer.index, tmp_path / CONTENT_INDEX)
    np.savez(tmp_path / CONTENT_ENCODER, idf=scorer.encoder.idf, components=scorer.encoder.components)
    loaded = _load_content(tmp_path)
    np.testing.assert_array_equal(loaded.item_vectors, scorer.item_vectors)
    np.testing.assert_array_equal(loaded.encoder.encode(ITEMS), scorer.item_vectors)
    profiles = scorer.profiles(np.array([[0, 1]]))
    np.testing.assert_array_equal(loaded.top(profiles, 3), scorer.top(profiles, 3))
    save_index(build_index(scorer.item_vectors[:5]), tmp_path / CONTENT_INDEX)  # an index of another catalog
    with pytest.raises(BundleError, match="content files are inconsistent"):
        _load_content(tmp_path)


def test_top_items_are_the_best_scored_ones():
    scorer = ContentScorer.fit(ITEMS, known=np.ones(len(ITEMS), dtype=bool), dim=4)
    profiles = scorer.profiles(np.array([[0, 1], [3, len(ITEMS)]]))
    top = scorer.top(profiles, 3)
    for row in range(2):
        scores = scorer.scores(profiles)[row]
        np.testing.assert_allclose(scores[top[row]], np.sort(scores)[::-1][:3], rtol=1e-5)
        np.testing.assert_allclose(scorer.item_scores(profiles[row], top[row]), scores[top[row]], rtol=1e-6)
