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
  the run and edits, and its peak (VmHWM);
- interaction latency in the browser (issue 13): a handle drag and a paint stroke with real
  mouse events, timed in the page from the mouse release to the first change of the results
  table (a MutationObserver), ``--drags`` of each; beside it the server's share (the update
  time the page reports: the engine's re-measure) - the rest is event delivery, state
  transfer and the page's own rendering.

    python benchmarks/bench_webgui.py [--runs 3] [--drags 5] [--latency-only]
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


# In the page: the time of the last mouse release, and of the first results-table change after it.
LATENCY_PROBE = """
window.__up = null; window.__table = null;
document.addEventListener('mouseup', () => { window.__up = performance.now(); window.__table = null; }, true);
new MutationObserver(() => { if (window.__up !== null && window.__table === null) window.__table = performance.now(); })
    .observe(document.getElementById('results-table'), {subtree: true, childList: true, characterData: true, attributes: true});
"""


def _drag(driver, points, steps=4):
    """Press at the first point of the slice view (fractions, y down), move through the others, release."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    area = driver.find_elements(By.CSS_SELECTOR, "#views .remote-controlled-area")[0]
    r = area.rect
    px = [(int(round((x - 0.5) * r["width"])), int(round((y - 0.5) * r["height"]))) for x, y in points]
    chain = ActionChains(driver, duration=20)
    chain.move_to_element_with_offset(area, *px[0]).pause(0.2).click_and_hold().pause(0.1)
    for (x0, y0), (x1, y1) in zip(px, px[1:]):
        for i in range(steps):
            dx = round(x0 + (x1 - x0) * (i + 1) / steps) - round(x0 + (x1 - x0) * i / steps)
            dy = round(y0 + (y1 - y0) * (i + 1) / steps) - round(y0 + (y1 - y0) * i / steps)
            chain.move_by_offset(dx, dy).pause(0.03)
    chain.release().perform()


def interaction_latency(driver, n=5):
    """{'drag_ms': [...], 'drag_server_ms': [...], 'stroke_ms': [...], 'stroke_server_ms': [...]}:
    mouse release -> results table changed, in the page, and the update time the server reports."""
    import math

    from selenium.webdriver.common.by import By

    def info():
        found = driver.find_elements(By.ID, "info-alert")
        return found[0].text if found else ""

    def handles():
        return {p["label"]: p for p in json.loads(driver.find_element(By.ID, "handle-xy").get_attribute("textContent") or "[]")}

    def one(action, pattern):
        driver.execute_script("window.__up = null; window.__table = null;")
        action()
        ms = _wait(lambda: driver.execute_script("return window.__table !== null && window.__up !== null && window.__table - window.__up"),
                   timeout=30)
        # (the message comes in the same state update as the table: it may read as before
        # when the update took the same number of ms)
        text = _wait(lambda: (lambda t: t if pattern in t else None)(info()), timeout=30)
        m = re.search(r"update (\d+) ms", text)
        return float(ms), (float(m.group(1)) if m else float("nan"))

    out = {"drag_ms": [], "drag_server_ms": [], "stroke_ms": [], "stroke_server_ms": []}
    driver.execute_script(LATENCY_PROBE)
    for i in range(n):                       # the anterior handle a little round the LV centre, to and fro
        h = handles()
        ant = next(v for k, v in h.items() if k.endswith("anterior"))
        c = h["LV centre"]
        vx, vy = ant["x"] - c["x"], ant["y"] - c["y"]
        turn = math.radians(12 if i % 2 == 0 else -12)
        path = [(ant["x"], ant["y"])] + [(c["x"] + vx * math.cos(turn * f) - vy * math.sin(turn * f),
                                          c["y"] + vx * math.sin(turn * f) + vy * math.cos(turn * f)) for f in (0.5, 1.0)]
        ms, server = one(lambda: _drag(driver, path), "handle dragged")
        out["drag_ms"].append(ms)
        out["drag_server_ms"].append(server)
    driver.execute_script("arguments[0].click()", driver.find_element(By.ID, "seg-lv"))
    driver.execute_script("arguments[0].click()", driver.find_element(By.ID, "tool-paint"))
    time.sleep(0.5)
    h = handles()
    ant = next(v for k, v in h.items() if k.endswith("anterior"))
    c = h["LV centre"]
    radius = math.hypot(ant["x"] - c["x"], ant["y"] - c["y"])
    for i in range(n):                       # LV blood pool painted over a new stretch of myocardium
        a = math.radians(40 + 360.0 * i / n)
        end = (c["x"] + 0.95 * radius * math.cos(a), c["y"] + 0.95 * radius * math.sin(a))
        mid = (c["x"] + 0.6 * radius * math.cos(a), c["y"] + 0.6 * radius * math.sin(a))
        ms, server = one(lambda: _drag(driver, [mid, end]), "Painted")
        out["stroke_ms"].append(ms)
        out["stroke_server_ms"].append(server)
    driver.execute_script("arguments[0].click()", driver.find_element(By.ID, "tool-none"))
    return out


def one_run(data, log, drags=5, latency_only=False):
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
        if drags:
            time.sleep(1.0)              # the zoom onto the heart settles
            lat = interaction_latency(driver, drags)
            for key, vals in lat.items():
                out[key] = statistics.median(vals)
                out[key + "_all"] = vals
        if latency_only:
            return out
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
    ("drag_ms", "handle drag -> table, in the browser", "ms"),
    ("drag_server_ms", "  of which the server's re-measure", "ms"),
    ("stroke_ms", "paint stroke -> table, in the browser", "ms"),
    ("stroke_server_ms", "  of which the server's re-measure", "ms"),
    ("rss_listening_mb", "server RSS when listening", "MB"),
    ("rss_page_mb", "server RSS, page connected", "MB"),
    ("rss_after_run_mb", "server RSS, after run + edits", "MB"),
    ("rss_peak_mb", "server peak RSS (VmHWM)", "MB"),
)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--drags", type=int, default=5, help="handle drags and paint strokes timed per run (0: none)")
    p.add_argument("--latency-only", action="store_true", help="stop after the latency measurements")
    args = p.parse_args()

    from CardiacAISegLib.phantoms.phantom import write_phantom

    with tempfile.TemporaryDirectory(prefix="bench-webgui-") as tmp:
        data = Path(tmp) / "data"
        write_phantom("cine", data)
        results = []
        with open(Path(tmp) / "server.log", "w") as log:
            for _ in range(args.runs):
                results.append(one_run(data, log, args.drags, args.latency_only))
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
    drag = [v for r in results for v in r.get("drag_ms_all", [])]
    if drag:
        print(f"latency: {len(drag)} drags and strokes per measure, medians of the runs' medians; "
              f"release -> table in the page, server share = the engine's re-measure time")
    print(json.dumps({"runs": results}), file=sys.stderr)


if __name__ == "__main__":
    main()
