"""The search page in a real browser: headless Chromium loads it, runs a query, sees the result
images, clicks one and sees its sentences. Skips where Chromium is not installed (.ci/run installs
Debian's chromium and chromium-driver)."""
from __future__ import annotations

import os

import pytest

from browser_helpers import chromium, find_chromium, search_and_open_first, serving
from xmr.search.engine import Searcher
from xmr.search.server import create_app

pytestmark = [pytest.mark.slow, pytest.mark.skipif(find_chromium() is None, reason="Chromium and chromedriver are not installed "
                                "(Debian: apt-get install chromium chromium-driver); .ci/run installs them")]


def test_page_query_results_and_sentences(vsepp_index, tmp_path):
    searcher = Searcher(vsepp_index[1])
    with serving(create_app(searcher)) as url, chromium() as driver:
        seen = search_and_open_first(driver, url, "a red circle")
        driver.save_screenshot(str(tmp_path / "page.png"))
    assert seen["results"] == 12 and not seen["error"]  # the page asks for k = 12
    top = searcher.search_text("a red circle", k=12)
    assert seen["first"] == top[0].image_id
    # every result shows its match verdict, and the line above the grid the top one's
    words = {"strong": "good match", "weak": "weak match", "none": "no real match"}
    assert seen["match_tags"] == [words[h.match] for h in top]
    assert seen["verdict"] and (("Nothing here seems to match" in seen["verdict"]) == (top[0].match == "none"))
    assert len(seen["sentences"]) == 5 and all(seen["sentences"])
    assert os.path.getsize(tmp_path / "page.png") > 10_000
