"""Micro-benchmark of candidate generation on a serving-sized world, old vs new in the same run.

    python benchmarks/candidates.py                  # 100k items, 500 ANN + 50 trending + 50 co-visitation
    python benchmarks/candidates.py --items 20000 --repeats 3

World (in memory, built in about a minute at 100k items): an untrained two-tower model of the real
architecture (embedding_dim 32), its item embeddings in the FAISS index `core.inference.ann_index`
builds (HNSW above 50k items), trending scores and a co-visitation CSR (about 50 nonzeros a row,
integer weights, so many tied scores) behind the serving adapters `serving.model.BundleTrending` /
`BundleCovisitation`, random item creation times (5% not yet available), and users with a 20-item
history (some padded) whose seen items are excluded, as the serving path does.

It times `CandidateGenerator.generate` for single requests and batches of 16, the frozen reference
(`tests/models/candidates_reference.py`, the implementation before the fast path) and the current one
interleaved in rounds so that noise from other processes hits both alike, and prints per-request
milliseconds (p50 over calls / mean) and the speed-up. Every timed output is also checked equal.
Also times `source_lists` alone, and the training-side `TrendingRecommender` (per-request times).

With `--sources als sasrec item_knn content` it then times `generate` for one request with each
optional source added on its own (random ALS factors and their index, an untrained SASRec of the default size,
100 random neighbours per item, random 64-d content vectors: the cost, not the quality), and with
all of them, against the three base sources in the same rounds, and writes the per-request p50
milliseconds to `--out` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import atomic  # noqa: E402
from core.inference import ann_index  # noqa: E402
from core.inference.baselines import TrendingRecommender, keep_top_per_row  # noqa: E402
from core.inference.candidates import CandidateConfig, CandidateGenerator, ann_search_k  # noqa: E402
from serving.model import BundleCovisitation, BundleTrending  # noqa: E402
from tests.models.candidates_reference import ReferenceCandidateGenerator  # noqa: E402
from training.retrieval.two_tower import ItemFeatures, TwoTowerConfig, TwoTowerModel, UserFeatures  # noqa: E402

NOW = 1_700_000_000
DAY = 86_400


def build_world(n_items: int, n_users: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = TwoTowerModel(TwoTowerConfig(embedding_dim=32, id_dim=32, epochs=0, progress=False),
                          n_users, n_items, 20, 4, 0).eval()
    item_emb = model.item_embeddings(ItemFeatures(category=rng.integers(0, 20, n_items)))
    started = time.perf_counter()
    index = ann_index.build_index(item_emb)
    print(f"FAISS {type(index).__name__} over {n_items:,} items built in {time.perf_counter() - started:.0f}s")
    popularity = rng.zipf(1.3, n_items).astype(float)
    trending = np.where(rng.random(n_items) < 0.1, popularity * rng.uniform(0.5, 1.0, n_items), 0.0)
    rows = np.repeat(np.arange(n_items), 25)  # and the transpose: about 50 a row
    p = popularity / popularity.sum()
    columns = np.where(rng.random(len(rows)) < 0.8, rng.integers(0, n_items, len(rows)),  # mostly uniform, some
                       rng.choice(n_items, len(rows), p=p))                              # by popularity
    covisit = sp.coo_matrix((rng.integers(1, 20, len(rows)).astype(float), (rows, columns)), shape=(n_items, n_items))
    covisit = (covisit + covisit.T).tocsr()
    print(f"co-visitation: {covisit.nnz / n_items:.0f} nonzeros a row")
    available = NOW - rng.integers(0, 365 * DAY, n_items)
    available[rng.random(n_items) < 0.05] = NOW + DAY  # created tomorrow
    events = rng.choice(n_items, 200_000, p=p)
    return {"model": model, "item_emb": item_emb, "index": index, "available": available,
            "trending": BundleTrending(trending), "covisit": BundleCovisitation(covisit),
            "events": (rng.integers(0, n_users, len(events)), events, NOW - rng.integers(1, 20 * DAY, len(events)))}


def requests(n_items: int, n_users: int, n: int, seed: int) -> tuple[UserFeatures, np.ndarray, list[set[int]]]:
    rng = np.random.default_rng(seed)
    history = rng.integers(0, n_items, (n, 20))
    lengths = rng.integers(0, 21, n)
    history[np.arange(20)[None, :] >= lengths[:, None]] = n_items  # padding
    users = UserFeatures(rng.integers(0, n_users, n), history, rng.normal(size=(n, 4)).astype(np.float32))
    exclude = [set(h[h < n_items].tolist()) for h in history]
    return users, NOW + rng.integers(0, 3600, n), exclude


def subset(users: UserFeatures, rows: slice) -> UserFeatures:
    return UserFeatures(users.user_idx[rows], users.history[rows], users.dense[rows])


def compare(name: str, calls: dict, n_calls: int, per_call: int, rounds: int) -> None:
    """`calls[label](i)` runs call i; rounds alternate the labels. Per-request ms, p50 and mean."""
    times = {label: [] for label in calls}
    outputs = {}
    for r in range(rounds):
        for label in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
            for i in range(n_calls):
                started = time.perf_counter()
                out = calls[label](i)
                times[label].append((time.perf_counter() - started) * 1e3 / per_call)
                if r == 0:
                    outputs.setdefault(i, []).append(out)
    for outs in outputs.values():
        _assert_same(outs[0], outs[1])
    (old, old_t), (new, new_t) = times.items()
    p50 = {label: float(np.median(t)) for label, t in times.items()}
    mean = {label: float(np.mean(t)) for label, t in times.items()}
    print(f"{name:<34} {old}: p50 {p50[old]:6.3f} mean {mean[old]:6.3f} | {new}: p50 {p50[new]:6.3f} "
          f"mean {mean[new]:6.3f} ms/request | speed-up p50 x{p50[old] / p50[new]:.1f}, "
          f"mean x{mean[old] / mean[new]:.1f}")


def optional_sources(n_items: int, seed: int) -> dict[str, dict]:
    """CandidateGenerator keyword arguments of each optional source, random but of serving size."""
    from core.inference.als import ALSUserSolver
    from core.inference.ann_index import build_index
    from core.inference.content import ContentScorer
    from core.inference.sasrec import SASRecScorer, SASRecShape
    from training.retrieval.sasrec import SASRecConfig, SASRecModel

    rng = np.random.default_rng(seed)
    sasrec = SASRecConfig()
    shape = SASRecShape(n_items, sasrec.dim, sasrec.n_blocks, sasrec.n_heads, sasrec.max_len)
    rows = np.repeat(np.arange(n_items), 100)
    knn = keep_top_per_row(sp.csr_matrix((rng.random(len(rows)), (rows, rng.integers(0, n_items, len(rows)))),
                                         shape=(n_items, n_items)), 100)
    content = rng.normal(size=(n_items, 64)).astype(np.float32)
    factors = rng.normal(0, 0.1, (n_items, 32)).astype(np.float32)
    # its index as a bundle ships it (core.bundle.ALS_INDEX: HNSW above 50k items)
    return {"als": {"als": ALSUserSolver(factors, 10.0, 1.0, build_index(factors))},
            "sasrec": {"sasrec": SASRecScorer(shape, SASRecModel(shape, 0.0).state_arrays())},
            "item_knn": {"item_knn": BundleCovisitation(knn)},
            "content": {"content": ContentScorer(content / np.linalg.norm(content, axis=1, keepdims=True))}}


def time_sources(parts: tuple, sources: list[str], singles: list, rounds: int, seed: int) -> dict[str, float]:
    """Per-request p50 ms of `generate` with the base sources, each of `sources` added, and all."""
    extra = optional_sources(len(parts[1]), seed)
    variants = {"base": {}, **{name: extra[name] for name in sources}}
    if len(sources) > 1:
        variants["all"] = {key: value for name in sources for key, value in extra[name].items()}
    generators = {name: CandidateGenerator(*parts, **kwargs) for name, kwargs in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in generators}
    for r in range(rounds):
        for name in (list(generators) if r % 2 == 0 else list(generators)[::-1]):
            for single in singles:
                started = time.perf_counter()
                generators[name].generate(*single)
                times[name].append((time.perf_counter() - started) * 1e3)
    p50 = {name: round(float(np.median(t)), 4) for name, t in times.items()}
    for name, value in p50.items():
        added = "" if name == "base" else f"  ({value - p50['base']:+.3f} ms over the base sources)"
        print(f"generate with {name:<9} p50 {value:6.3f} ms/request{added}")
    return p50


def _assert_same(a, b) -> None:
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    else:
        assert len(a) == len(b)
        for x, y in zip(a, b):
            for source in ("two_tower", "trending", "covisit"):
                assert list(x[source]) == list(y[source]), source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200, help="single-request calls per round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (old and new alternate)")
    parser.add_argument("--threads", type=int, default=1, help="torch / FAISS threads (serving uses 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sources", nargs="*", default=[], choices=["als", "sasrec", "item_knn", "content"],
                        help="also time generate with these optional sources added")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the --sources timings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import faiss
    from threadpoolctl import threadpool_limits
    faiss.omp_set_num_threads(args.threads)
    # numpy's BLAS too, as the server's OMP_NUM_THREADS does (python -m serving): with two threads a
    # small matrix-vector product waits on the other thread, ~10 ms on a busy machine.
    threadpool_limits(args.threads)

    world = build_world(args.items, args.users, args.seed)
    config = CandidateConfig(n_ann=500, n_trending=50, n_covisit=50, covisit_seeds=5)
    parts = (world["model"], world["item_emb"], world["index"], world["available"], world["trending"],
             world["covisit"], config)
    generators = {"old": ReferenceCandidateGenerator(*parts), "new": CandidateGenerator(*parts)}
    users, times, exclude = requests(args.items, args.users, args.requests, args.seed + 1)
    singles = [(subset(users, slice(i, i + 1)), times[i:i + 1], exclude[i:i + 1]) for i in range(len(users))]
    limits = {"two_tower": config.n_ann, "trending": config.n_trending, "covisit": config.n_covisit}
    embeddings = world["model"].user_embeddings(users)
    for generator in generators.values():  # warm-up (lazy imports, FAISS, allocator)
        generator.generate(*singles[0])

    print(f"{args.items:,} items, n_ann={config.n_ann}, n_trending={config.n_trending}, "
          f"n_covisit={config.n_covisit}, {args.threads} thread(s); {args.requests} requests x {args.repeats} rounds")
    compare("generate, 1 request a call", {label: (lambda i, g=g: g.generate(*singles[i]))
                                            for label, g in generators.items()},
            len(singles), 1, args.repeats)
    batches = [(subset(users, slice(i, i + 16)), times[i:i + 16], exclude[i:i + 16])
               for i in range(0, len(users) - 15, 16)]
    compare("generate, 16 requests a call", {label: (lambda i, g=g: g.generate(*batches[i]))
                                             for label, g in generators.items()},
            len(batches), 16, args.repeats)
    compare("source_lists, 1 request a call",
            {label: (lambda i, g=g: g.source_lists(singles[i][0], singles[i][1], singles[i][2], limits,
                                                   embeddings[i:i + 1]))
             for label, g in generators.items()}, len(singles), 1, args.repeats)

    fixed = {"user tower": lambda i: world["model"].user_embeddings(singles[i][0]),
             "FAISS search, first (ann_search_k)": lambda i: ann_index.search(
                 world["index"], embeddings[i:i + 1], ann_search_k(
                     config.n_ann, len(singles[i][2][0]) + singles[i][0].history.shape[1], world["index"].ntotal)),
             "FAISS search, wide (2n + 50)": lambda i: ann_index.search(world["index"], embeddings[i:i + 1],
                                                                      2 * config.n_ann + 50),
             "DataFrame build": lambda i: pd.DataFrame(columns[i], copy=False)}
    columns = [generators["new"].generate_columns(*single) for single in singles]
    for label, call in fixed.items():
        spent = []
        for i in range(len(singles)):
            started = time.perf_counter()
            call(i)
            spent.append((time.perf_counter() - started) * 1e3)
        print(f"  of which, in both: {label:<16} p50 {np.median(spent):6.3f} ms/request")
    fallbacks = []
    dense_list = generators["new"]._dense_list
    generators["new"]._dense_list = lambda *args: fallbacks.append(1) or dense_list(*args)
    generators["new"].generate(users, times, exclude)
    print(f"lists ranked over the whole catalog (a tie at the cut-off score): {len(fallbacks)} of "
          f"{2 * len(users)} trending / co-visitation lists")
    del generators["new"]._dense_list

    user_idx, items, event_times = world["events"]
    trending = TrendingRecommender(args.items).fit(user_idx, items, event_times, as_of=NOW)
    parts = (*parts[:4], trending, world["covisit"], config)
    generators = {"old": ReferenceCandidateGenerator(*parts), "new": CandidateGenerator(*parts)}
    compare("generate, training-side trending", {label: (lambda i, g=g: g.generate(*batches[i]))
                                                 for label, g in generators.items()},
            len(batches), 16, max(1, args.repeats // 2))
    if args.sources:
        base = (*parts[:4], world["trending"], world["covisit"], config)
        p50 = time_sources(base, args.sources, singles, args.repeats, args.seed)
        if args.out is not None:
            result = {"items": args.items, "requests": args.requests, "rounds": args.repeats,
                      "threads": args.threads, "generate_p50_ms": p50}
            atomic.write_json_atomic(result, args.out)
            print(f"written {args.out}: {json.dumps(result)}")


if __name__ == "__main__":
    main()
