#!/usr/bin/env python3
"""Times what each dashboard page asks for, and (with Selenium) each page in Chromium.

Usage: scripts/dashboard-timing.py HTTP_BASE [ROUNDS]

Against a running cluster (e.g. `cairn dev --nodes 9` holding 1,000 shards). For every
endpoint a page fetches each second it prints the median and the maximum of ROUNDS calls
(default 10) and the answer's size. If Selenium and Debian's chromium/chromedriver are
there, it then opens each page in headless Chromium and times from the click on its tab
to the page drawn (its table filled, or its four charts holding every node's data).
"""

import json
import statistics
import sys
import time
import urllib.request

base = sys.argv[1].rstrip("/")
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10


def get(path):
    started = time.perf_counter()
    with urllib.request.urlopen(base + path, timeout=30) as r:
        body = r.read()
    return (time.perf_counter() - started) * 1000, body


nodes = json.loads(get("/v1/nodes")[1])["nodes"]
shards = json.loads(get("/v1/shards")[1])["shards"]
replicas = sum(len(s["replicas"]) for s in shards)
print(f"{len(nodes)} nodes, {len(shards)} shards, {replicas} replicas")
paths = ["/", "/dashboard/app.js", "/dashboard/vendor/uPlot.iife.js", "/v1/nodes",
         "/v1/shards", "/v1/tables", "/v1/events"]
paths += [f"/v1/timeline?node={n['id']}" for n in nodes]
print("| endpoint | median ms | max ms | bytes | failed |")
print("|---|---:|---:|---:|---:|")
for path in paths:
    times, size, failed = [], 0, 0
    for _ in range(rounds):
        try:
            took, body = get(path)
        except OSError:  # an error status (a node that did not answer in time) or none
            failed += 1
            continue
        times.append(took)
        size = len(body)
    if times:
        print(f"| `{path}` | {statistics.median(times):.1f} | {max(times):.1f} | {size:,} | {failed} |")
    else:
        print(f"| `{path}` | | | | {failed} |")

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    print("no selenium: pages not timed in a browser")
    sys.exit(0)

options = webdriver.ChromeOptions()
for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1400,900"]:
    options.add_argument(arg)
options.binary_location = "/usr/bin/chromium"
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
count = lambda sel: driver.execute_script(
    "return document.querySelectorAll(arguments[0]).length", sel)
drawn = {
    "overview": lambda d: count("#nodes tbody tr") == len(nodes),
    "shards": lambda d: count("#shards tbody tr") == len(shards),
    "tables": lambda d: count("#tables tbody tr") >= 1,
    "charts": lambda d: d.find_element(By.ID, "chart-statements").get_attribute("data-nodes")
    == ",".join(n["id"] for n in nodes),
    "events": lambda d: count("#events tbody tr") >= 1,
}
try:
    print("\n| page | first draw ms (median of %d) | max ms | |" % rounds)
    print("|---|---:|---:|---|")
    for page, done in drawn.items():
        times = []
        for _ in range(rounds):
            driver.get("about:blank")
            started = time.perf_counter()
            driver.get(base + "/#" + page)
            try:
                WebDriverWait(driver, 30, poll_frequency=0.01).until(done)
            except Exception:
                continue
            times.append((time.perf_counter() - started) * 1000)
        if times:
            print(f"| {page} | {statistics.median(times):.0f} | {max(times):.0f} | {rounds - len(times)} not drawn in 30 s |")
        else:
            print(f"| {page} | | | none drawn in 30 s |")
finally:
    driver.quit()
