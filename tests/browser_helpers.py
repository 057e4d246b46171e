"""Drive the search page in headless Chromium (Debian's ``chromium`` + ``chromium-driver``) for the
browser test and the documentation screenshot. Nothing is downloaded: the system browser is used."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = "chromedriver"


def find_chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None where Chromium and its driver are not installed."""
    browser = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    driver = shutil.which(DRIVER) or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    return (browser, driver) if browser and driver else None


@contextmanager
def serving(app, host: str = "127.0.0.1"):
    """Run a FastAPI app with uvicorn in a thread on a free loopback port; yields the base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start in 30 s")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def chromium(width: int = 1280, height: int = 900):
    """A headless Chromium WebDriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_chromium()
    if found is None:
        raise RuntimeError("Chromium is not installed (Debian: apt-get install chromium chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch a browser
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def search_and_open_first(driver, base_url: str, query: str, timeout: float = 60) -> dict:
    """Load the page, search ``query``, wait for result images, click the first, wait for its
    sentences. Returns what a person would have seen."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    driver.get(base_url + "/")
    wait.until(lambda d: "images" in d.find_element(By.ID, "status").text)
    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys(query)
    driver.find_element(By.ID, "go").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".hit img"))
    wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", im)
                             for im in d.find_elements(By.CSS_SELECTOR, ".hit img")))
    hits = driver.find_elements(By.CSS_SELECTOR, ".hit")
    first = hits[0].get_attribute("data-id")
    tags = [t.text for t in driver.find_elements(By.CSS_SELECTOR, ".hit .match")]
    verdict = driver.find_element(By.ID, "verdict").text
    hits[0].click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sentences li"))
    return {"results": len(hits), "first": first, "match_tags": tags, "verdict": verdict,
            "sentences": [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#sentences li")],
            "error": driver.find_element(By.ID, "error").text}
