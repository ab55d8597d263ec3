"""Opening the viewer link of a study of ten 12 MP phone photos, measured in Chromium.

Ours: /studies/<uid> on loopback; the page fetches the study's metadata, the main image
rendered for its stage and a thumbnail per image from /dicomweb (authenticated, audited). Times
are the Performance API's, from navigation start to the paint of the first thumbnail and of the
main image (Element Timing render times; the viewer's own marks as a fallback). "Cold" is the
first open after the server-side thumbnail cache was emptied, "warm" the next opens; every open
uses a fresh browser context (empty HTTP cache).

Peer, same run, same server: a static page showing the same ten JPEGs as plain static files
(no DICOM, no auth), the browser scaling each 12 MP file down for its thumbnail.
Server and browser share the machine's cores (nothing is pinned: both must run at once).
Usage: .venv/bin/python bench/bench_viewer.py [OPENS]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from common import table, twelve_mp_jpegs
from playwright.sync_api import sync_playwright
from werkzeug.middleware.shared_data import SharedDataMiddleware
from werkzeug.serving import WSGIRequestHandler, make_server

from app.factory import create_app
from app.pipeline.decode import probe
from app.workflow.tokens import create_token

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}
PHOTOS = 10
GOALS_MS = {"first thumbnail": 1000.0, "main image": 2000.0}

# Element Timing render times of images with content (an <img> still without src is reported
# too, at the first paint of the page), waiting until both kinds have been painted.
TIMINGS_JS = """() => new Promise((resolve) => {
  const found = {};
  const done = () => "thumbnail" in found && "main-image" in found;
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      if (!e.url || !e.naturalWidth) continue;
      const t = e.renderTime || e.loadTime;
      if (!(e.identifier in found) || t < found[e.identifier]) found[e.identifier] = t;
    }
    if (done()) resolve({thumbnail: found["thumbnail"], main: found["main-image"]});
  }).observe({type: "element", buffered: true});
  setTimeout(() => resolve({thumbnail: NaN, main: NaN}), 60000);
})"""


class Quiet(WSGIRequestHandler):
    def log_request(self, *args: object, **kwargs: object) -> None:
        return None


def make_study(app: Any, files: list[Path], token: str) -> str:
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    session = client.post("/api/v1/sessions", headers=headers, json={
        "patient": {"id": "BENCH1", "issuer": "BENCH", "name": "BENCH^VIEWER"},
        "body_site": "14975008", "laterality": "L"}).get_json()
    for n in range(PHOTOS):
        put = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}",
                         data=files[n % len(files)].read_bytes(), headers=headers)
        assert put.status_code == 201, put.get_json()
    return session["study_instance_uid"]


def peer_page(folder: Path, files: list[Path]) -> None:
    """A static page with the same JPEGs: one large, ten as CSS-sized thumbnails."""
    for n in range(PHOTOS):
        shutil.copyfile(files[n % len(files)], folder / f"{n}.jpg")
    thumbs = "".join(f'<img elementtiming="thumbnail" src="{n}.jpg" width="160" height="120">'
                     for n in range(PHOTOS))
    (folder / "index.html").write_text(
        "<!doctype html><html><body style='margin:0;display:flex'>"
        f"<div style='width:200px;display:flex;flex-direction:column'>{thumbs}</div>"
        "<img elementtiming='main-image' src='0.jpg' style='width:1000px;height:750px;"
        "object-fit:contain'></body></html>")


def open_once(browser: Any, url: str, token: str | None, ready: str) -> dict[str, float]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    if token:
        page.add_init_script(f"sessionStorage.setItem('ebiw.token', {token!r})")
    page.goto(url)
    page.wait_for_selector(ready, timeout=60_000)
    timings = page.evaluate(TIMINGS_JS)
    context.close()
    return timings


def main() -> None:
    opens = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    files = twelve_mp_jpegs()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        app = create_app({"data_dir": Path(tmp) / "var", "env": "test"})
        svc = app.extensions["ebiw"]
        svc.db.create_schema()
        token = create_token(svc.db, "bench", "view")
        study = make_study(app, files, create_token(svc.db, "bench-capture", "capture"))
        static = Path(tmp) / "peer"
        static.mkdir()
        peer_page(static, files)
        wsgi = SharedDataMiddleware(app.wsgi_app, {"/peer": str(static)})
        server = make_server("127.0.0.1", 0, wsgi, threaded=True, request_handler=Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        thumbs = svc.settings.data_dir / "cache" / "thumbnails"
        rows: dict[str, list[dict[str, float]]] = {"ours, cold": [], "ours, warm": [], "peer": []}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            open_once(browser, f"{base}/peer/index.html", None, "img")  # warm the browser
            for _ in range(opens):
                shutil.rmtree(thumbs, ignore_errors=True)
                rows["ours, cold"].append(open_once(browser, f"{base}/studies/{study}", token,
                                                    "body[data-ready=true]"))
                rows["ours, warm"].append(open_once(browser, f"{base}/studies/{study}", token,
                                                    "body[data-ready=true]"))
                rows["peer"].append(open_once(browser, f"{base}/peer/index.html", None, "img"))
            browser.close()
        server.shutdown()

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[kind])

    sizes = sorted({f"{probe(f.read_bytes()).width}x{probe(f.read_bytes()).height}"
                    for f in files})
    print(f"viewer link of a study of {PHOTOS} photos of 12 MP ({', '.join(sizes)}), "
          f"{VIEWPORT['width']}x{VIEWPORT['height']}, loopback, {opens} opens each; "
          f"median ms from navigation start; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after, {os.cpu_count()} cores\n")
    print(table(["page", "first thumbnail painted", "main image painted"], [
        [kind, f"{median(kind, 'thumbnail'):.0f}", f"{median(kind, 'main'):.0f}"]
        for kind in rows]))
    worst = {"first thumbnail": max(median(k, "thumbnail") for k in ("ours, cold", "ours, warm")),
             "main image": max(median(k, "main") for k in ("ours, cold", "ours, warm"))}
    print("\ngoals: " + "; ".join(
        f"{name} <= {goal:.0f} ms: {'met' if worst[name] <= goal else 'NOT met'} "
        f"({worst[name]:.0f} ms)" for name, goal in GOALS_MS.items()))


if __name__ == "__main__":
    main()
