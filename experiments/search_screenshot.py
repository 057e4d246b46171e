"""The search page as a person sees it, for the docs: serve an index, run a query in headless
Chromium, click the first result, save a screenshot.

    .venv/bin/xmr index build runs/vsepp-f8k-sweep/bert --data flickr8k --split test --out runs/f8k-test-index
    .venv/bin/python experiments/search_screenshot.py runs/f8k-test-index docs/search-page.png "a dog runs on the beach"
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the browser helpers live with their test
from browser_helpers import chromium, search_and_open_first, serving  # noqa: E402
from xmr.search.engine import Searcher
from xmr.search.server import create_app


def main() -> None:
    index, out, query = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(2)
    with serving(create_app(Searcher(index))) as url, chromium(1280, 1000) as driver:
        seen = search_and_open_first(driver, url, query)
        driver.save_screenshot(out)
    print(f"wrote {out}: {seen['results']} results, first {seen['first']}, sentences: {seen['sentences'][:2]}")


if __name__ == "__main__":
    main()
