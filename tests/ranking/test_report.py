import base64
import json

from training.evaluation.report import write_report

RESULTS = {
    "popularity": {"ndcg@5": 0.10, "ndcg@10": 0.12, "recall@5": 0.08, "recall@10": 0.15,
                   "hitrate@10": 0.3, "map@10": 0.05},
    "ranker": {"ndcg@5": 0.20, "ndcg@10": 0.25, "recall@5": 0.18, "recall@10": 0.30,
               "hitrate@10": 0.5, "map@10": 0.11, "coverage@10": 0.4},
}


def tiny_png(path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1, 1))
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png")
    return path


def test_report_files_and_content(tmp_path):
    plot = tiny_png(tmp_path / "importance.png")
    out = tmp_path / "report"
    json_path, html_path = write_report(
        out,
        RESULTS,
        {"plots": {"feature importance": plot}, "notes": ["lift over popularity: +108% <ndcg@10>"]},
    )
    assert json_path == out / "metrics.json" and html_path == out / "report.html"
    assert json.loads(json_path.read_text()) == RESULTS
    markdown = (out / "report.md").read_text()
    assert "| ranker" in markdown and "ndcg@10" in markdown and "0.2500" in markdown
    assert "lift over popularity" in markdown

    page = html_path.read_text()
    assert page.count('src="data:image/png;base64,') == 2  # metric@K curves + importance
    assert base64.b64encode(plot.read_bytes()).decode() in page
    assert "&lt;ndcg@10&gt;" in page  # notes are escaped
    assert "<td>0.2500</td>" in page
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
