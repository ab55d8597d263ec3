"""The capture app as an installable PWA: the app shell at ``/``, ``/sw.js`` and the manifest.

The service worker and the manifest are served at the root so that their scope is the whole
site. The worker precaches the *app shell only* (the page, scripts, styles, icons; never API
answers or photos) in a cache named after a hash of those files, so every change of the shell
installs a new worker that replaces the old cache.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, render_template, send_from_directory

from app.pipeline.quality import client_config
from app.web import services

bp = Blueprint("pwa", __name__)

ENTRY = "js/app.js"
"""The app's entry module; the shell is it, the modules it imports, the stylesheet and icons."""

_IMPORT = re.compile(r'^\s*(?:import|export)\b[^;]*?\bfrom\s+"\./([\w.-]+\.js)"', re.M)


def _static() -> Path:
    return Path(current_app.static_folder or "static")


def _modules(static: Path) -> list[Path]:
    """The entry module and every module it imports, directly or not (relative imports)."""
    found: list[Path] = []
    todo = [static / ENTRY]
    while todo:
        module = todo.pop()
        if module in found:
            continue
        found.append(module)
        todo.extend(module.parent / name for name in _IMPORT.findall(module.read_text()))
    return found


def _page_config() -> dict[str, Any]:
    """What the capture page carries besides its files: the photo-quality thresholds for
    ``static/js/quality.js`` and the longest clip the server takes (``EBIW_MAX_VIDEO_SECONDS``,
    for ``static/js/recorder.js``)."""
    return {"quality": client_config(),
            "max_video_seconds": services().settings.max_video_seconds}


@cache
def _shell(static: Path, templates: Path, config: str) -> tuple[str, tuple[str, ...]]:
    """(version, URLs) of the app shell; the version hashes every file the shell is made of
    and the page's ``config`` (JSON of :func:`_page_config`)."""
    files = sorted([*_modules(static), static / "css" / "theme.css", static / "css" / "app.css",
                    *(static / "icons").glob("*.png")])
    digest = hashlib.sha256()
    for path in [*files, static / "manifest.webmanifest", templates / "base.html",
                 templates / "partials" / "header.html", templates / "capture" / "index.html",
                 templates / "capture" / "sw.js"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(config.encode())  # in the page
    urls = ["/", "/manifest.webmanifest",
            *(f"/static/{p.relative_to(static).as_posix()}" for p in files)]
    return digest.hexdigest()[:16], tuple(urls)


def shell() -> tuple[str, tuple[str, ...]]:
    """The current app's shell version and URLs."""
    return _shell(_static(), Path(current_app.template_folder or "templates"),
                  json.dumps(_page_config(), sort_keys=True))


def shell_page(template: str, *, mimetype: str | None = None, **context: Any) -> Response:
    """``template`` rendered alike for everyone (no user data, so it may be cached), with
    ``Cache-Control: no-cache``: the browser revalidates it before each use."""
    response = Response(render_template(template, **context), mimetype=mimetype)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/")
def index() -> Response:
    """The app shell: the same page for everyone (no user data), so it can be cached; it
    carries :func:`_page_config`."""
    return shell_page("capture/index.html", **_page_config())


@bp.get("/sw.js")
def service_worker() -> Response:
    """The service worker, with the shell version and file list filled in."""
    version, urls = shell()
    return shell_page("capture/sw.js", mimetype="text/javascript", version=version,
                      shell=list(urls))


@bp.get("/manifest.webmanifest")
def manifest() -> Response:
    """The web app manifest (name, standalone display, icons)."""
    return send_from_directory(_static(), "manifest.webmanifest",
                               mimetype="application/manifest+json", max_age=0)
