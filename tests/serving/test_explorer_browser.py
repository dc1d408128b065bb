"""The recommendation explorer (/ui) in a real headless Chromium, against the serving tests' world
served over HTTP by uvicorn: what a user sees on the pages.

Needs Debian's `chromium` (make install puts it there as root) and Playwright (requirements.lock);
skips with the reason otherwise. RECSYS_UI_SCREENSHOT=path saves a screenshot of the user page
(how docs/explorer.png is made; synthetic data only)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from .helpers import wait_for

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("RECSYS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (make install)")
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).is_file()):
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (make install does it as root) "
                    "or set RECSYS_CHROMIUM to run the browser tests")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def base_url(world, tmp_path_factory):
    """The app of the world under uvicorn on a free port, with a reports folder holding one
    training report."""
    import uvicorn

    from serving.app import create_app

    tmp = tmp_path_factory.mktemp("explorer")
    report = tmp / "reports" / "training" / world.bundle.name / "report.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html><body><h1>training report of the test world</h1></body></html>")
    (tmp / "outside.txt").write_text("not a report")
    app = create_app(world.serving_settings(tmp, reports_dir=tmp / "reports"))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _ready(url), timeout=120)
    yield url
    server.should_exit = True
    thread.join(timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def warm_user(base_url) -> dict:
    """A user with a recent history, as the explorer's API describes it."""
    users = httpx.get(f"{base_url}/ui/api/sample-users", timeout=10).json()
    assert users, "no sample user with a recent history"
    page = httpx.get(f"{base_url}/ui/api/users/{users[0]}", timeout=30).json()
    assert page["history"] and page["recommendations"]
    return page


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_a_users_history_and_recommendations_appear_and_an_item_shows_its_similar_items(page, base_url, warm_user):
    page.goto(f"{base_url}/ui/")
    page.fill("#user-input", str(warm_user["user_id"]))
    page.click("#user-form button[type=submit]")

    history = page.locator("#history li")
    rows = page.locator("#recommendations tbody tr")
    rows.first.wait_for()
    assert history.count() == len(warm_user["history"])
    first_seen = warm_user["history"][0]
    assert first_seen["title"] and first_seen["title"] in history.first.inner_text()
    assert rows.count() == len(warm_user["recommendations"])
    top = warm_user["recommendations"][0]
    top_row = rows.first.inner_text()
    assert top["title"] in top_row and top["source"] in top_row and f"{top['ranker_score']:.3f}" in top_row
    assert f"user {warm_user['user_id']}" in page.inner_text("#user-summary")
    assert page.locator("#error").is_hidden()
    if os.environ.get("RECSYS_UI_SCREENSHOT"):
        rows.first.locator("a").click()
        page.locator("#similar-embedding li").first.wait_for()
        page.screenshot(path=os.environ["RECSYS_UI_SCREENSHOT"], full_page=True)

    clicked = warm_user["recommendations"][1]
    rows.nth(1).locator("a.item-link").click()
    page.wait_for_function("title => document.querySelector('#similar-title').textContent.includes(title)",
                           arg=clicked["title"])
    similar = page.locator("#similar-embedding li")
    assert page.locator("#similar").is_visible()
    expected = httpx.get(f"{base_url}/ui/api/items/{clicked['item_id']}/similar?k=8", timeout=10).json()
    assert similar.count() == len(expected["embedding_neighbours"]) > 0
    assert expected["embedding_neighbours"][0]["title"] in similar.first.inner_text()


def test_a_bad_user_id_shows_an_error_message_not_a_blank_page(page, base_url):
    page.goto(f"{base_url}/ui/")
    page.fill("#user-input", "abc")
    page.click("#user-form button[type=submit]")
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "not a user id" in error.inner_text()
    assert page.locator("#recommendations tbody tr").count() == 0

    page.fill("#user-input", str(2**64))  # digits, but beyond the int64 entity keys: the service says 422
    page.click("#user-form button[type=submit]")
    page.wait_for_function("document.querySelector('#error').textContent.includes('HTTP 422')")
    assert "Could not recommend" in error.inner_text()


def test_model_live_and_reports_pages_show_the_service(page, base_url, world, warm_user):
    page.goto(f"{base_url}/ui/#model")
    page.wait_for_function("document.querySelector('#model-facts').textContent.length > 0")
    served = httpx.get(f"{base_url}/model", timeout=10).json()["version"]  # other tests publish bundles too
    assert served in page.inner_text("#model-facts")
    metrics = page.locator("#model-metrics tbody tr")
    assert "two_stage" in [metrics.nth(i).locator("td").first.inner_text() for i in range(metrics.count())]

    page.click("nav a[data-page=live]")
    page.wait_for_function("document.querySelector('#live-facts').textContent.includes('/s')", timeout=TIMEOUT_MS)
    live = page.inner_text("#live-facts")
    assert "latency p50 / p95 / p99" in live and " ms" in live and "cold-start share" in live

    page.click("nav a[data-page=reports]")
    link = page.locator("#report-links a").first
    link.wait_for()
    assert link.get_attribute("href") == f"/reports/training/{world.bundle.name}/report.html"
    assert "training report of the test world" in httpx.get(base_url + link.get_attribute("href")).text


def test_reports_are_served_read_only_without_leaving_their_folder(base_url):
    for path in ("/reports/%2e%2e/outside.txt", "/reports/..%2Foutside.txt", "/reports//etc/passwd",
                 "/reports/training", "/reports/missing.html"):
        response = httpx.get(base_url + path, timeout=10)
        assert response.status_code == 404, path
        assert "not a report" not in response.text and "root:" not in response.text
    assert httpx.post(f"{base_url}/reports/x.html", timeout=10).status_code == 405


def test_the_live_figures_count_the_requests_they_summarize(base_url):
    # One request first: in a process hosting several apps (this test session), a counter's value
    # appears in an app's exposition only once it counted there.
    assert httpx.get(f"{base_url}/recommendations/1", timeout=10).status_code == 200
    before = httpx.get(f"{base_url}/ui/api/live", timeout=10).json()
    for _ in range(3):
        assert httpx.get(f"{base_url}/recommendations/1", timeout=10).status_code == 200
    time.sleep(0.05)
    after = httpx.get(f"{base_url}/ui/api/live", timeout=10).json()
    assert after["recommendation_requests"] == before["recommendation_requests"] + 3
    assert after["request_rate_per_s"] > 0 and after["latency_ms"]["p50"] > 0
    assert after["item_cache_age_s"] is not None and after["online_store_up"] is True
