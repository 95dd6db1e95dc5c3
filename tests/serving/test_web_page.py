"""The web page at / in headless Chromium (Debian's chromium and chromium-driver, driven by
selenium), against a real server on 127.0.0.1 with an API key: the key entered once, a prompt
submitted, the progress followed to the end, the video playing, the job listed as completed, and
a long job stopped with the cancel button. The page's screenshot is kept as a test artifact."""
import os
from pathlib import Path

import pytest
import torch
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

DEADLINE_S = 120  # every wait gives up after this
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
API_KEY = "page-test-key"
ARTIFACTS = os.environ.get("STDIT_TEST_ARTIFACTS")  # where screenshots go (default: the test's tmp_path)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1100,1000")


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    # The OS's driver, named: selenium then downloads nothing.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(DEADLINE_S)
    yield driver
    driver.quit()


def wait_for(driver, condition, what: str):
    return WebDriverWait(driver, DEADLINE_S, poll_frequency=0.1).until(
        lambda d: condition(d), message=f"timed out waiting for {what}")


def type_into(driver, element_id: str, text: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def video_state(driver) -> dict:
    return driver.execute_script(
        "const v = document.getElementById('video');"
        "return {hidden: v.hidden, src: v.currentSrc, readyState: v.readyState, duration: v.duration,"
        "        width: v.videoWidth, height: v.videoHeight, error: v.error && v.error.code};")


def test_the_page_makes_and_plays_a_video(serve, browser, tmp_path, capsys):
    server = serve(api_key=API_KEY)
    browser.get(f"http://127.0.0.1:{server.port}/")

    # Without the key the API refuses, and the page says what to do.
    wait_for(browser, lambda d: "API key" in d.find_element(By.ID, "message").text, "the page to ask for the key")
    type_into(browser, "api-key", API_KEY)
    browser.find_element(By.ID, "key-save").click()
    assert browser.execute_script("return sessionStorage.getItem('stdit-engine.api-key')") == API_KEY

    type_into(browser, "prompt", "a sea turtle swimming over a coral reef")
    type_into(browser, "seed", "7")
    type_into(browser, "steps", "3")
    browser.find_element(By.ID, "submit").click()

    current = browser.find_element(By.ID, "current")
    wait_for(browser, lambda d: current.get_attribute("data-status") == "completed", "the job to complete")
    job_id = browser.find_element(By.ID, "current-id").text
    assert browser.find_element(By.ID, "progress").get_attribute("value") == "100"
    state = wait_for(browser, lambda d: (s := video_state(d))["readyState"] >= 2 and s, "the video to load")
    assert not state["hidden"] and state["src"].startswith("blob:") and state["error"] is None
    assert state["duration"] > 0 and (state["width"], state["height"]) == (64, 64)

    row = f"#jobs tr[data-job-id='{job_id}']"
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row + "[data-status='completed']"),
             "the job list to show the job completed")
    job = server.request("GET", f"/v1/videos/{job_id}", headers={"Authorization": f"Bearer {API_KEY}"})[2]
    assert (job["status"], job["seed"], job["num_steps"]) == ("completed", 7, 3)
    assert torch.equal(server.engine.produced(job).frames, server.engine.direct(job).frames)

    artifacts = Path(ARTIFACTS) if ARTIFACTS else tmp_path
    artifacts.mkdir(parents=True, exist_ok=True)
    screenshot = artifacts / "web-page.png"
    assert browser.save_screenshot(str(screenshot))
    with capsys.disabled():  # printed in CI's log too, where output is captured
        print(f"\nscreenshot of the page: {screenshot}")

    # A long job, stopped with the cancel button.
    type_into(browser, "steps", "1000")
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, lambda d: current.get_attribute("data-status") == "in_progress", "the long job to run")
    browser.find_element(By.ID, "cancel").click()
    wait_for(browser, lambda d: current.get_attribute("data-status") == "cancelled", "the job to be cancelled")
    long_id = browser.find_element(By.ID, "current-id").text
    assert long_id != job_id
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"#jobs tr[data-job-id='{long_id}'][data-status='cancelled']"),
             "the job list to show the job cancelled")
    assert video_state(browser)["hidden"]

    # A poll lost to the network is tried again: the job is still followed to the end.
    browser.execute_script(
        "const realFetch = window.fetch; let failed = false;"
        "window.fetch = (url, options) => {"
        "  if (!failed && /v1\\/videos\\/video_[0-9a-f]+$/.test(String(url))) {"
        "    failed = true; return Promise.reject(new TypeError('network down (injected)')); }"
        "  return realFetch(url, options); };")
    type_into(browser, "steps", "3")
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, lambda d: "network down" in d.find_element(By.ID, "message").text, "the failed poll's report")
    wait_for(browser, lambda d: current.get_attribute("data-status") == "completed", "the job to complete after it")

    # A seed no JavaScript number holds exactly is refused, not rounded to another video's.
    counts = server.service.store.counts()
    type_into(browser, "seed", str(2**53 + 1))
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, lambda d: "whole number" in d.find_element(By.ID, "message").text, "the seed to be refused")
    assert server.service.store.counts() == counts
