"""The dashboard in a real browser: Debian's chromium, headless, driven by Selenium.

Usage: dashboard.py HTTP_BASE PG_URL_OF_ANOTHER_NODE [SCREENSHOT_DIR]

Against a 3-node `cairn dev` cluster with a table `pets`: every page loads with no console
error and shows the right nodes and shards; the SQL console runs a query and shows an
error's SQLSTATE; the charts merge every node's last seconds; a row inserted through another node appears in the live view; the crash
button kills n2, then the page shows it not alive and a new leader in the events; the
restart button brings it back.
"""

import os
import sys
import time

import psycopg
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

base, pg_url = sys.argv[1], sys.argv[2]
shots = sys.argv[3] if len(sys.argv) > 3 else None

options = webdriver.ChromeOptions()
for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1400,900"]:
    options.add_argument(arg)
options.binary_location = os.environ.get("CAIRN_CHROMIUM", "/usr/bin/chromium")
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(
    service=Service(os.environ.get("CAIRN_CHROMEDRIVER", "/usr/bin/chromedriver")),
    options=options,
)
# The page redraws every second: an element read may be replaced meanwhile.
STALE = (StaleElementReferenceException,)
wait = WebDriverWait(driver, 30, ignored_exceptions=STALE)


def console_errors(ignore=()):
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return [e for e in errors if not any(i in e["message"] for i in ignore)]


def texts(selector):
    """The text of every element `selector` matches, read in one go."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)", selector
    )


def click(selector):
    """Clicks what `selector` matches now (a button of a row redrawn every second)."""
    driver.execute_script("document.querySelector(arguments[0]).click()", selector)


def shot(name):
    if shots:
        driver.save_screenshot(os.path.join(shots, name))


try:
    # Overview: three nodes, alive, healthy.
    driver.get(base + "/#overview")
    wait.until(lambda d: len(texts("#nodes tbody tr")) == 3)
    wait.until(lambda d: d.find_element(By.ID, "health").text == "healthy")
    rows = driver.find_elements(By.CSS_SELECTOR, "#nodes tbody tr")
    assert [r.get_attribute("data-node") for r in rows] == ["n1", "n2", "n3"], texts("#nodes tbody tr")
    assert all("alive" in r.text for r in rows), texts("#nodes tbody tr")
    # Each node's memory, and its CPU use once two samples are in.
    wait.until(lambda d: all(" MiB" in t and "%" in t for t in texts("#nodes tbody tr")))
    # The fault buttons show in a dev cluster.
    assert driver.find_element(By.CSS_SELECTOR, "#nodes tbody tr button").is_displayed()
    shot("dashboard-overview.png")

    # Shards: the table's shards with a leader each, filterable and sortable.
    driver.find_element(By.CSS_SELECTOR, "nav a[data-page=shards]").click()
    wait.until(lambda d: any("pets" in t for t in texts("#shards tbody tr")))
    driver.find_element(By.ID, "shard-filter").send_keys("pets")
    wait.until(lambda d: all("pets" in t for t in texts("#shards tbody tr")))
    pets = texts("#shards tbody tr")
    assert len(pets) == 3, pets
    assert all(t.split()[-1] == "ok" and "*" in t for t in pets), pets
    # Each shard's term, applied index, lag in entries and in ms, and size.
    headers = texts("#shards thead th")
    assert headers[2] == "holds" and headers[5:10] == ["term", "applied", "lag (entries)", "lag (ms)", "size"], headers
    wait.until(lambda d: all(
        c[2].startswith("hash ")
        and c[5].isdigit() and c[6].isdigit() and c[7].isdigit() and c[8].isdigit() and c[9].endswith("B")
        for c in (t.split("\t") for t in texts("#shards tbody tr"))
    ))
    driver.find_element(By.CSS_SELECTOR, "#shards th[data-key=shard]").click()
    shot("dashboard-shards.png")

    # Tables: the table's layout.
    driver.find_element(By.CSS_SELECTOR, "nav a[data-page=tables]").click()
    wait.until(lambda d: len(texts("#tables tr[data-table=pets]")) == 1)
    row = texts("#tables tr[data-table=pets] td")
    assert row[1] == "hash(id)" and row[3] == "3" and row[4] == "3" and row[6] == "id, name", row
    # Its approximate rows and bytes, once the leaders have counted them.
    wait.until(lambda d: texts("#tables tr[data-table=pets] td")[7] == "2")
    assert texts("#tables tr[data-table=pets] td")[8].endswith("B")

    # SQL console: a result table, then an error with its SQLSTATE.
    driver.find_element(By.CSS_SELECTOR, "nav a[data-page=sql]").click()
    box = driver.find_element(By.ID, "sql-text")
    box.send_keys("SELECT 40 + 2 AS answer")
    driver.find_element(By.ID, "sql-run").click()
    wait.until(lambda d: texts("#sql-result tbody td") == ["42"])
    assert texts("#sql-result thead th") == ["answer"]
    box.clear()
    box.send_keys("SELECT * FROM nowhere")
    driver.find_element(By.ID, "sql-run").click()
    wait.until(lambda d: "42P01" in d.find_element(By.ID, "sql-error").text)
    assert "SELECT 40 + 2 AS answer" in texts("#sql-history li")
    box.clear()
    box.send_keys("SELECT id, name FROM pets ORDER BY id")
    driver.find_element(By.ID, "sql-run").click()
    wait.until(lambda d: len(texts("#sql-result tbody tr")) >= 1)
    shot("dashboard-sql.png")
    # The failed query's 400 is the only console error so far.
    errors = console_errors(ignore=["/v1/sql"])
    assert not errors, errors

    # Charts: every node's last 15 minutes, merged; the statements just run are counted.
    driver.find_element(By.CSS_SELECTOR, "nav a[data-page=charts]").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#page-charts .uplot canvas")) == 4)
    chart = lambda: driver.find_element(By.ID, "chart-statements")
    wait.until(lambda d: chart().get_attribute("data-nodes") == "n1,n2,n3")
    wait.until(lambda d: int(chart().get_attribute("data-statements") or 0) >= 3)
    wait.until(lambda d: int(chart().get_attribute("data-fsyncs") or 0) >= 1)
    titles = texts("#page-charts .u-title")
    assert titles == ["Statements per second", "Statement latency",
                      "Raft proposals and log fsyncs per second", "Log fsync latency"], titles
    shot("dashboard-charts.png")
    # One node alone.
    Select(driver.find_element(By.ID, "chart-node")).select_by_value("n2")
    wait.until(lambda d: chart().get_attribute("data-nodes") == "n2")

    # Live view: a row inserted through another node appears.
    driver.find_element(By.CSS_SELECTOR, "nav a[data-page=live]").click()
    Select(driver.find_element(By.ID, "live-kind")).select_by_value("table")
    driver.find_element(By.ID, "live-target").send_keys("pets")
    driver.find_element(By.ID, "live-start").click()
    wait.until(lambda d: "following" in d.find_element(By.ID, "live-status").text)
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("INSERT INTO pets VALUES (77, 'seen live')")
    wait.until(lambda d: any("seen live" in t for t in texts("#live-events tbody tr")))
    shot("dashboard-live.png")

    # Files: upload through the page, list it, download it, delete it.
    driver.find_element(By.CSS_SELECTOR, "nav a[data-page=files]").click()
    local = os.path.join(os.environ.get("TMPDIR", "/tmp"), "cairn-dashboard-upload.txt")
    with open(local, "w") as f:
        f.write("uploaded from the dashboard\n" * 1000)
    driver.find_element(By.ID, "files-prefix").send_keys("docs/")
    driver.find_element(By.ID, "files-choose").send_keys(local)
    driver.find_element(By.ID, "files-upload").click()
    wait.until(lambda d: "uploaded docs/cairn-dashboard-upload.txt" in d.find_element(By.ID, "files-status").text)
    wait.until(lambda d: len(texts("#files tr[data-path='docs/cairn-dashboard-upload.txt']")) == 1)
    row = texts("#files tr[data-path='docs/cairn-dashboard-upload.txt'] td")
    assert row[1] == str(28 * 1000), row
    body = driver.execute_async_script(
        "const done = arguments[0];"
        "fetch(document.querySelector(\"#files tr[data-path='docs/cairn-dashboard-upload.txt'] a\").href)"
        ".then(r => r.text()).then(done)"
    )
    assert body == "uploaded from the dashboard\n" * 1000, body[:100]
    click("#files tr[data-path='docs/cairn-dashboard-upload.txt'] button")
    wait.until(lambda d: not texts("#files tr[data-path='docs/cairn-dashboard-upload.txt']"))
    driver.find_element(By.ID, "files-list").click()
    wait.until(lambda d: "0 file(s)" in d.find_element(By.ID, "files-status").text)

    # Crash n2 from the page once it leads a shard: it is shown not alive, and the events
    # name the crash and, after it, a new leader on another node.
    driver.find_element(By.CSS_SELECTOR, "nav a[data-page=overview]").click()
    WebDriverWait(driver, 60, ignored_exceptions=STALE).until(
        lambda d: int((texts("#nodes tr[data-node=n2] td")[5].split() or ["0"])[0]) >= 1
    )
    click("#nodes tr[data-node=n2] button[data-action=crash]")
    wait.until(lambda d: "crashed" in d.find_element(By.ID, "fault-message").text)
    WebDriverWait(driver, 60, ignored_exceptions=STALE).until(
        lambda d: "alive" not in texts("#nodes tr[data-node=n2]")[0].split()
    )
    assert driver.find_element(By.ID, "health").text.endswith(("alert", "alerts")), driver.find_element(By.ID, "health").text
    driver.find_element(By.CSS_SELECTOR, "nav a[data-page=events]").click()

    def elected_after_crash(d):
        rows = texts("#events tbody tr")  # newest first
        crash = next((i for i, t in enumerate(rows) if "dev: n2 crashed" in t), None)
        return crash is not None and any(
            "elected leader" in t and ("n1 elected" in t or "n3 elected" in t) for t in rows[:crash]
        )

    WebDriverWait(driver, 60, ignored_exceptions=STALE).until(elected_after_crash)
    assert any("n2" in t and "liveness" in t for t in texts("#events tbody tr")), texts("#events tbody tr")
    # n2's own events stay on the page while it is down.
    assert any(t.split("\t")[1] == "n2" for t in texts("#events tbody tr")), texts("#events tbody tr")
    shot("dashboard-events.png")

    # Restart it from the page: alive again.
    driver.find_element(By.CSS_SELECTOR, "nav a[data-page=overview]").click()
    click("#nodes tr[data-node=n2] button[data-action=restart]")
    WebDriverWait(driver, 90, ignored_exceptions=STALE).until(lambda d: "restarted" in d.find_element(By.ID, "fault-message").text)
    WebDriverWait(driver, 60, ignored_exceptions=STALE).until(
        lambda d: "alive" in texts("#nodes tr[data-node=n2]")[0].split()
    )
    errors = console_errors(ignore=["/v1/sql", "/v1/nodes", "/v1/shards", "/v1/events"])
    assert not errors, errors
    print("dashboard: ok")
finally:
    driver.quit()
