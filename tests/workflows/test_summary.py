"""The end-of-demo summary as the terminal shows it."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from workflows.summary import DemoSummary, latency_line, lift_line, print_summary

METRICS = {
    "popularity": {"ndcg@10": 0.10, "recall@10": 0.05, "hitrate@10": 0.40, "map@10": 0.06, "coverage@10": 0.01},
    "two_stage": {"ndcg@10": 0.15, "recall@10": 0.09, "hitrate@10": 0.55, "map@10": 0.08, "coverage@10": 0.20},
    "covisitation": {"ndcg@10": 0.12, "recall@10": 0.07, "hitrate@10": 0.60, "map@10": 0.07, "coverage@10": 0.30},
}
PAGE = {"user_id": 42, "cold_start": False,
        "history": [{"item_id": 5, "title": "Blue Kettle", "category": "home"}],
        "recommendations": [{"item_id": 9, "title": "Red Kettle", "category": "home", "source": "covisit",
                             "ranker_score": 1.234},
                            {"item_id": 11, "title": None, "category": None, "source": "two_tower",
                             "ranker_score": 0.5}]}


def render(summary: DemoSummary) -> str:
    console = Console(record=True, width=160, force_terminal=False)
    print_summary(console, summary)
    return console.export_text()


def test_the_summary_shows_every_model_the_latency_a_users_history_next_to_the_list_and_the_reports():
    text = render(DemoSummary(METRICS, [10.0] * 98 + [50.0, 90.0], [PAGE],
                              {"training report": Path("reports/training/v/report.html"), "drift report": None},
                              {"explorer": "http://127.0.0.1:8000/ui/"}))
    lines = text.splitlines()
    models = [line.split()[0] for line in lines if line.split() and line.split()[0] in METRICS]
    assert models == ["two_stage", "covisitation", "popularity"]
    assert "0.1500" in text and "0.6000" in text
    assert "vs the best source or baseline, covisitation 0.1200: +25.0%" in text
    assert "p50 10.0 ms" in text and "p99" in text
    kettle_row = next(line for line in lines if "Blue Kettle" in line)
    assert "Red Kettle" in kettle_row and "covisit" in kettle_row and "1.23" in kettle_row
    assert "item 11" in text  # no title: the id
    assert "reports/training/v/report.html" in text and "drift report: not written" in text
    assert "http://127.0.0.1:8000/ui/" in text


def test_lines_without_data_say_so():
    assert latency_line([]) == "no requests were timed"
    assert lift_line({"popularity": {"ndcg@10": 0.1}}) == "no two-stage metrics found"


def test_the_metrics_table_fits_80_columns_with_every_name_whole():
    metrics = {**METRICS, "two_stage_before_refit": METRICS["two_stage"], "als": METRICS["covisitation"]}
    console = Console(record=True, width=80, force_terminal=False)
    print_summary(console, DemoSummary(metrics))
    lines = console.export_text().splitlines()
    rows = [line.split()[0] for line in lines if line.split() and (line.split()[0] in metrics or "↳" in line)]
    assert rows == ["two_stage", "↳", "covisitation", "als", "popularity"]
    assert any(line.split()[:4] == ["↳", "before", "refit", "0.1500"] for line in lines)
    header = next(line for line in lines if "NDCG" in line)
    assert header.split() == ["model", "NDCG", "recall", "hit", "rate", "MAP", "coverage"]


def test_each_ranker_kinds_list_follows_the_two_stage_rows():
    metrics = {**METRICS, "two_stage_before_refit": METRICS["two_stage"],
               "two_stage_lightgbm": METRICS["two_stage"], "two_stage_dcn": METRICS["popularity"]}
    console = Console(record=True, width=80, force_terminal=False)
    print_summary(console, DemoSummary(metrics))
    text = console.export_text()
    lines = [line.split() for line in text.splitlines() if line.split()]
    rows = [line[:3] for line in lines if line[0] in metrics or line[0] == "↳"]
    assert rows == [["two_stage", "0.1500", "0.0900"], ["↳", "before", "refit"], ["↳", "lightgbm", "ranker"],
                    ["↳", "dcn", "ranker"], ["covisitation", "0.1200", "0.0700"], ["popularity", "0.1000", "0.0500"]]
    assert any(line[:4] == ["↳", "dcn", "ranker", "0.1000"] for line in lines)
    assert "vs the best source or baseline, covisitation 0.1200" in text


def test_the_monitor_stage_says_what_each_gate_decided():
    from workflows.traffic import DemoReports, monitor_outcome

    def line(drift: int, ab: int) -> str:
        return monitor_outcome(DemoReports(Path("d.html"), drift, Path("a.html"), ab))

    assert line(0, 0) == "no drift; A/B report written"
    assert line(1, 0) == "drift found (gate exit 1); A/B report written"
    assert line(2, 1) == "drift check failed (exit 2); A/B sample-ratio mismatch (gate exit 1)"
