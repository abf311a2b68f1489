"""Start-up time and memory of the browser GUI server (`cardiacaiseg gui`), as a table.

Each run starts a fresh server on a free loopback port with a data folder holding a cine
phantom, and measures:

- time from launch to listening (the server prints its address when it listens);
- time from launch to the first rendered page, and from navigation to it (headless Chromium,
  started before the server; navigation as soon as it listens; rendered = both views show an
  image) - skipped, saying so, when Chromium/Selenium are missing;
- time for "Open sample" and for "Run" -> results table (the phantom with its labels);
- the server-reported update time of an edit (grow myocardium) and of a handle turn;
- the server's resident memory (VmRSS) when it starts listening, with a page connected, after
  the run and edits, and its peak (VmHWM).

    python benchmarks/bench_webgui.py [--runs 3]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY_PREFIX = "CardiacAISeg web GUI:"


def _mem_mb(pid, key="VmRSS"):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _start(data, log):
    env = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "CardiacAISegLib.cli", "gui", "--data", str(data), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    while True:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if line.startswith(READY_PREFIX):
            return proc, line[len(READY_PREFIX):].split()[0], time.perf_counter() - t0, t0


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, "selenium not installed"
    chromium, driver = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (os.path.exists(chromium) and os.path.exists(driver)):
        return None, "Debian chromium/chromium-driver not installed"
    o = webdriver.ChromeOptions()
    o.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--window-size=1500,1000"):
        o.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=o), None


def _wait(fn, timeout=60.0, step=0.05):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            v = fn()
        except Exception:  # noqa: BLE001 - the page is still building
            v = None
        if v:
            return v
        time.sleep(step)
    raise TimeoutError(str(fn))


RENDERED = """
const imgs = document.querySelectorAll('#views .remote-controlled-area img');
return imgs.length >= 2 && Array.from(imgs).every(i => i.complete && i.naturalWidth > 0);"""


def one_run(data, log):
    from selenium.webdriver.common.by import By

    out = {}
    driver, why = _browser()          # started first: its own start-up is not the server's
    proc, url, out["listening_s"], t0 = _start(data, log)
    try:
        out["rss_listening_mb"] = _mem_mb(proc.pid)
        if driver is None:
            out["note"] = why
            return out
        t_nav = time.perf_counter()
        driver.get(url)
        _wait(lambda: driver.execute_script(RENDERED))
        now = time.perf_counter()
        out["first_render_from_launch_s"], out["first_render_from_navigation_s"] = now - t0, now - t_nav
        time.sleep(1.0)
        out["rss_page_mb"] = _mem_mb(proc.pid)

        def click(i):
            driver.execute_script("arguments[0].click()", driver.find_element(By.ID, i))

        def values():
            return {r.get_attribute("data-measure"): r.get_attribute("data-value")
                    for r in driver.find_elements(By.CSS_SELECTOR, "#results-table tr[data-measure]")}

        def enabled(i):
            el = driver.find_element(By.ID, i)
            return el.is_enabled() and "v-btn--disabled" not in el.get_attribute("class")

        t1 = time.perf_counter()
        click("open-sample-btn")
        _wait(lambda: "20 frame(s)" in driver.find_element(By.ID, "study-line").text and enabled("run-btn"))
        out["open_sample_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        click("run-btn")
        _wait(lambda: values().get("LV EDV"))
        out["run_to_table_s"] = time.perf_counter() - t2
        for button, key, pattern in (("grow-btn", "edit_update_ms", "grown"), ("ant-plus", "handle_update_ms", "anterior handle")):
            click(button)
            text = _wait(lambda: (lambda t: t if pattern in t else None)(driver.find_element(By.ID, "info-alert").text))
            m = re.search(r"update (\d+) ms", text)
            out[key] = float(m.group(1)) if m else float("nan")
        out["rss_after_run_mb"] = _mem_mb(proc.pid)
        out["rss_peak_mb"] = _mem_mb(proc.pid, "VmHWM")
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


ROWS = (
    ("listening_s", "launch -> listening", "s"),
    ("first_render_from_launch_s", "launch -> first rendered page", "s"),
    ("first_render_from_navigation_s", "navigation -> first rendered page", "s"),
    ("open_sample_s", "open sample (cine phantom)", "s"),
    ("run_to_table_s", "run (its labels) -> table", "s"),
    ("edit_update_ms", "edit (grow myocardium) update", "ms"),
    ("handle_update_ms", "handle turn update", "ms"),
    ("rss_listening_mb", "server RSS when listening", "MB"),
    ("rss_page_mb", "server RSS, page connected", "MB"),
    ("rss_after_run_mb", "server RSS, after run + edits", "MB"),
    ("rss_peak_mb", "server peak RSS (VmHWM)", "MB"),
)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()

    from CardiacAISegLib.phantom import write_phantom

    with tempfile.TemporaryDirectory(prefix="bench-webgui-") as tmp:
        data = Path(tmp) / "data"
        write_phantom("cine", data)
        results = []
        with open(Path(tmp) / "server.log", "w") as log:
            for _ in range(args.runs):
                results.append(one_run(data, log))
    notes = {r.get("note") for r in results if r.get("note")}
    print(f"cardiacaiseg gui: {args.runs} run(s), {os.cpu_count()} CPU(s), cine phantom 20 x 10 x 128 x 128")
    print(f"{'measure':40s} {'median':>9s} {'min':>9s} {'max':>9s}  unit")
    for key, label, unit in ROWS:
        vals = [r[key] for r in results if key in r]
        if not vals:
            print(f"{label:40s} {'-':>9s} {'-':>9s} {'-':>9s}  {unit}")
            continue
        fmt = "{:9.0f}" if unit in ("MB", "ms") else "{:9.2f}"
        print(f"{label:40s} {fmt.format(statistics.median(vals))} {fmt.format(min(vals))} {fmt.format(max(vals))}  {unit}")
    for n in notes:
        print(f"note: {n}")
    print(json.dumps({"runs": results}), file=sys.stderr)


if __name__ == "__main__":
    main()
