"""The demo page at `/` and the offline /docs and /redoc.

Without a browser: every page and the scripts it names are served by the server itself
(no external URL), with or without an API key. In headless Chromium (Debian's
`chromium` + `chromium-driver`, driven by Selenium) against `python -m server` on the
shipped model: the page is clicked through each task and shows what the API answers;
/docs and /redoc render from local scripts only. Screenshots go to tests/artifacts/
(ignored by git; CI keeps them as artifacts). Skipped only when Chromium is missing
outside CI; `.ci/run` installs it, and under CI a missing browser fails.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest

from docs import browser, examples
from tests.test_server_harness import ADAPTERS, running_server

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
PAGES = ["/", "/docs", "/redoc"]


def _local_references(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)


@pytest.mark.parametrize("api_key", [None, "secret"])
def test_pages_and_their_scripts_are_served_locally(api_key):
    with running_server(api_key=api_key) as url:
        for page in PAGES:
            r = httpx.get(url + page, timeout=30)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
            assert not re.search(r"https?://", r.text), f"{page} names an external URL"
            assert "default-src 'self'" in r.headers["content-security-policy"], page
            refs = [ref for ref in _local_references(r.text) if not ref.startswith("data:")]
            assert any(ref.endswith(".js") for ref in refs), page
            for ref in refs:
                assert ref.startswith("/"), (page, ref)
                got = httpx.get(url + ref, timeout=30)
                assert got.status_code == 200 and len(got.content) > 100, (page, ref, got.status_code)
        listed = httpx.get(url + "/demo/examples", timeout=30).json()["examples"]
        assert {e["name"] for e in listed} == {"green-squares.png", "star-above-circles.png", "triangles-and-circle.png"}
        assert httpx.get(url + listed[0]["url"], timeout=30).content[:4] == b"\x89PNG"
        schema = httpx.get(url + "/openapi.json", timeout=30, headers={"authorization": "Bearer secret"}).json()
        assert "/" not in schema["paths"] and "/caption" in schema["paths"]  # the page is not part of the API


@pytest.fixture(scope="module")
def shipped():
    if browser.find() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are missing under CI: .ci/run installs them")
        pytest.skip("chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)")
    ARTIFACTS.mkdir(exist_ok=True)
    with examples.shipped_server() as url, browser.chromium() as driver:
        browser.open_demo(driver, url)
        yield url, driver


def _shot(driver, name: str) -> None:
    path = ARTIFACTS / f"demo-{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def _cards(driver) -> dict[str, str]:
    return {c.get_attribute("data-adapter"): c.text for c in driver.find_elements("css selector", "#results .result")}


def test_adapter_table_lists_what_the_server_lists(shipped):
    url, driver = shipped
    served = httpx.get(url + "/adapters", timeout=30).json()["adapters"]
    rows = {r.get_attribute("data-name"): r.text for r in driver.find_elements("css selector", "#adapter-table tbody tr")}
    assert set(rows) == {a["name"] for a in served}
    for a in served:
        assert a["task"] in rows[a["name"]] and f"{a['trainable_params']:,}" in rows[a["name"]]
        assert ("yes" if a["pinned"] else "no") in rows[a["name"]]


def test_caption_with_several_adapters(shipped):
    url, driver = shipped
    shipped_caption = [a["name"] for a in httpx.get(url + "/adapters", timeout=30).json()["adapters"]
                       if a["task"] == "caption"][0]  # the shipped caption adapter
    browser.choose(driver, "caption", "triangles-and-circle.png", ["", "none", shipped_caption])
    text = browser.run(driver)
    cards = _cards(driver)
    assert set(cards) == {"default", "none", shipped_caption}
    image = (Path(examples.REPO) / "examples" / "triangles-and-circle.png").read_bytes()
    for adapter in ("none", shipped_caption):
        answer = httpx.post(url + "/caption", files={"image": image}, data={"adapter": adapter}, timeout=60).json()
        assert answer["caption"] in cards[adapter]
    assert "triangles-and-circle.png" in text
    _shot(driver, "caption")


def test_named_adapters_only_go_as_one_fanout_request(shipped):
    url, driver = shipped
    shipped_caption = [a["name"] for a in httpx.get(url + "/adapters", timeout=30).json()["adapters"]
                       if a["task"] == "caption"][0]
    requests = _caption_requests(url)
    browser.choose(driver, "caption", "green-squares.png", ["none", shipped_caption])
    browser.run(driver)
    cards = _cards(driver)
    assert set(cards) == {"none", shipped_caption}
    assert _caption_requests(url) == requests + 1, "two named adapters: one fan-out request"
    image = (Path(examples.REPO) / "examples" / "green-squares.png").read_bytes()
    fan = httpx.post(url + "/caption", files={"image": image}, data={"adapters": ["none", shipped_caption]},
                     timeout=60).json()["per_adapter"]
    for answer in fan:
        assert answer["caption"] in cards[answer["adapter"]]


def _caption_requests(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('unitrans_requests_total{route="/caption"'))


def test_vqa_answer_and_candidate_scores(shipped):
    url, driver = shipped
    browser.choose(driver, "vqa", "triangles-and-circle.png", [""])
    browser.ask_vqa(driver, "what colour is the circle ?", ["red", "blue", "green"])
    card = _cards(driver)["default"]
    image = (Path(examples.REPO) / "examples" / "triangles-and-circle.png").read_bytes()
    answer = httpx.post(url + "/vqa", files={"image": image}, timeout=60,
                        data={"question": "what colour is the circle ?", "candidates": ["red", "blue", "green"]}).json()
    assert f"answer: {answer['answer']}" in card
    rows = driver.find_elements("css selector", "#results table.scores tr")[1:]
    assert [r.text.split()[0] for r in rows] == sorted(answer["scores"], key=answer["scores"].get, reverse=True)
    for row in rows:
        cand, score = row.text.split()[:2]
        assert float(score) == pytest.approx(answer["scores"][cand], abs=1e-3)
    shares = [int(r.text.split()[-1].rstrip("%")) for r in rows]
    assert 98 <= sum(shares) <= 102
    _shot(driver, "vqa")
    # without candidates: a generated answer, as /vqa generates it
    browser.ask_vqa(driver, "what shape is the blue object ?")
    generated = httpx.post(url + "/vqa", files={"image": image}, data={"question": "what shape is the blue object ?"},
                           timeout=60).json()["answer"]
    assert f"answer: {generated}" in _cards(driver)["default"]
    assert not driver.find_elements("css selector", "#results table.scores")


def test_retrieval_ranks_the_gallery_with_a_dropped_image(shipped, tmp_path):
    url, driver = shipped
    mine = tmp_path / "my-squares.png"
    mine.write_bytes((Path(examples.REPO) / "examples" / "green-squares.png").read_bytes())
    driver.find_element("id", "file").send_keys(str(mine))  # what a drop or the file picker does
    browser.wait(driver, lambda d: d.find_elements("css selector", '#examples .thumb[data-id="my-squares.png"]'))
    browser.choose(driver, "retrieve", None, ["", "none"])
    query = driver.find_element("id", "query")
    query.clear()
    query.send_keys("three green squares")
    browser.run(driver)
    cards = _cards(driver)
    assert set(cards) == {"default", "none"}
    ranked = driver.find_elements("css selector", '#results .result[data-adapter="default"] ol.ranking li')
    ids = [li.find_element("css selector", ".id").text for li in ranked]
    assert sorted(ids) == ["green-squares.png", "my-squares.png", "star-above-circles.png", "triangles-and-circle.png"]
    for li in ranked:  # every thumbnail loaded
        assert driver.execute_script("return arguments[0].naturalWidth", li.find_element("css selector", "img")) == 64
    assert set(ids[:2]) == {"green-squares.png", "my-squares.png"}  # the same pixels score the same
    assert re.search(r"score -?\d+\.\d{3} · itc -?\d+\.\d{3}", ranked[0].text)
    _shot(driver, "retrieve")


def test_a_failed_request_shows_the_servers_message(shipped):
    url, driver = shipped
    browser.choose(driver, "vqa", "green-squares.png", [""])
    with pytest.raises(AssertionError, match="422 unprocessable: question: empty"):
        browser.ask_vqa(driver, " ")


def test_a_server_with_an_api_key_asks_for_it(shipped):
    _, driver = shipped
    with running_server(api_key="secret") as url:  # the tiny random world of the server tests
        browser.open_demo(driver, url)
        assert "401 unauthorized" in driver.find_element("id", "error").text
        assert not driver.find_elements("css selector", "#adapter-table tbody tr")
        key = driver.find_element("id", "api-key")
        key.send_keys("secret\t")  # leaving the field sends its change event
        browser.wait(driver, lambda d: len(d.find_elements("css selector", "#adapter-table tbody tr")) == len(ADAPTERS))
        browser.choose(driver, "caption", "green-squares.png", ["caption-b"])
        browser.run(driver)
        assert set(_cards(driver)) == {"caption-b"} and not driver.find_element("id", "error").is_displayed()


@pytest.mark.parametrize("page, rendered", [("/docs", ".opblock"), ("/redoc", "[data-section-id]"),
                                           ("/", "#examples .thumb")])
def test_pages_render_from_this_server_alone(shipped, page, rendered):
    """Everything a page loads comes from the server; whatever a bundled script would fetch
    from elsewhere (ReDoc's sidebar logo) is blocked by the pages' Content-Security-Policy."""
    url, driver = shipped
    driver.get_log("browser")  # drop earlier entries
    driver.get(url + page)
    browser.wait(driver, lambda d: len(d.find_elements("css selector", rendered)) > 2)
    if page != "/":
        assert "/caption" in driver.find_element("tag name", "body").text
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    blocked = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
    assert any(r.startswith(url) and r.endswith(".js") for r in resources), resources
    for r in resources:
        assert r.startswith(url) or any(r in m and "blocked" in m for m in blocked), (r, blocked)
    _shot(driver, page.strip("/") or "page")
