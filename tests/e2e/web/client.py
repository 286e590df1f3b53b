"""HTTP clients for the end-to-end tests of the status page and /metrics.

    client.py get URL [TOKEN [CA]]       {"status": ..., "body": ...}
    client.py metrics URL [TOKEN [CA]]   {"status": ..., "samples": [{"name", "labels", "value"}]}
        (TOKEN "-" for none; CA: the PEM file to trust for https://)
    client.py browser BASE TOKEN JOB SCREENSHOT_DIR
        logs in through the form, then reads the front page and JOB's page
        in headless Chromium; prints what it found as JSON and saves
        screenshots.

Every answer is one JSON document on stdout.
"""

import json
import ssl
import sys
import urllib.error
import urllib.request


def get(url, token=None, ca=None):
    request = urllib.request.Request(url)
    if token and token != "-":
        request.add_header("Authorization", "Bearer " + token)
    context = ssl.create_default_context(cafile=ca) if ca else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, response.read().decode(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("Content-Type", "")


def metrics(url, token=None, ca=None):
    # The OpenMetrics parser of the Prometheus project's own Python client.
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    status, body, content_type = get(url, token, ca)
    samples = []
    if status == 200:
        if not content_type.startswith("application/openmetrics-text"):
            raise SystemExit("unexpected content type " + content_type)
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                samples.append({"name": s.name, "labels": s.labels, "value": s.value})
    return {"status": status, "samples": samples}


def browser(base, token, job, shots):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
    ]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    found = {}
    try:
        driver.set_page_load_timeout(30)
        # Without a token, the front page is the login form.
        driver.get(base)
        found["login_form"] = len(driver.find_elements(By.ID, "token")) == 1
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.ID, "login").click()
        WebDriverWait(driver, 20).until(expected_conditions.presence_of_element_located((By.LINK_TEXT, "Log out")))
        found["jobs_listed"] = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#jobs a")]
        found["workers"] = len(driver.find_elements(By.CSS_SELECTOR, "#workers tr")) - 1
        driver.save_screenshot(shots + "/status-jobs.png")
        driver.get(base + "jobs/" + job)
        found["state"] = driver.find_element(By.ID, "state").text
        found["tasks"] = len(driver.find_elements(By.CSS_SELECTOR, "#tasks tr")) - 1
        found["failures"] = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#failures td.error")]
        found["timeline_bars"] = len(driver.find_elements(By.CSS_SELECTOR, "#timeline rect"))
        found["timeline_failed_bars"] = len(driver.find_elements(By.CSS_SELECTOR, "#timeline rect.t-failed"))
        found["refreshes"] = len(driver.find_elements(By.CSS_SELECTOR, "meta[http-equiv=refresh]")) == 1
        found["skipped"] = len(driver.find_elements(By.ID, "skipped")) == 1
        driver.save_screenshot(shots + "/status-job-" + found["state"] + ".png")
    finally:
        driver.quit()
    return found


def main(argv):
    command = argv[1]
    if command == "get":
        status, body, _ = get(*argv[2:5])
        out = {"status": status, "body": body}
    elif command == "metrics":
        out = metrics(*argv[2:5])
    elif command == "browser":
        out = browser(*argv[2:6])
    else:
        raise SystemExit("unknown command " + command)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv)
