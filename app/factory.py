"""``create_app``: wires settings, database, archive, workflow and blueprints; nothing else."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from app.logs import install_log_hygiene
from app.settings import Settings
from app.web import security
from app.web.accounts import bp as accounts_bp
from app.web.admin import bp as admin_bp
from app.web.api import bp as api_bp
from app.web.audit import init_app as init_audit
from app.web.auth import bp as auth_bp
from app.web.auth.oidc import init_app as init_oidc
from app.web.batch import init_app as init_batch
from app.web.corrections import bp as corrections_bp
from app.web.dicomweb import bp as dicomweb_bp
from app.web.errors import register_error_handlers
from app.web.exports import bp as exports_bp
from app.web.fhir import bp as fhir_bp
from app.web.health import bp as health_bp
from app.web.launch import init_app as init_launch
from app.web.measurements import bp as measurements_bp
from app.web.patients import init_app as init_patients
from app.web.pwa import bp as pwa_bp
from app.web.retention import bp as retention_bp
from app.web.shell import bp as shell_bp
from app.web.studies import bp as studies_bp
from app.web.studies.wounds import bp as wounds_bp
from app.web.timing import init_app as init_timing
from app.workflow.delivery import BackgroundDelivery
from app.workflow.services import build_services

ROOT = Path(__file__).resolve().parent.parent


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the WSGI app from ``EBIW_*`` settings (``overrides`` win, for tests)."""
    settings = Settings.from_env(overrides=overrides)
    app = Flask(__name__, static_folder=str(ROOT / "static"),
                template_folder=str(ROOT / "templates"))
    app.config.update(SECRET_KEY=settings.secret_key,
                      MAX_CONTENT_LENGTH=settings.max_upload_bytes,
                      JSON_SORT_KEYS=False)
    svc = build_services(settings)
    app.extensions["ebiw"] = svc
    if settings.delivery_thread:
        app.extensions["ebiw.delivery"] = BackgroundDelivery(svc.db, svc.archive,
                                                             svc.registry).start()
    install_log_hygiene(redacting=settings.env != "test")
    security.init_app(app)
    register_error_handlers(app)
    app.register_blueprint(shell_bp)
    app.register_blueprint(health_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(measurements_bp)
    app.register_blueprint(admin_bp)
    init_patients(app)
    init_batch(app)
    app.register_blueprint(auth_bp)
    init_oidc(app)
    init_launch(app)
    app.register_blueprint(pwa_bp)
    app.register_blueprint(fhir_bp)
    app.register_blueprint(dicomweb_bp)
    app.register_blueprint(studies_bp)
    app.register_blueprint(wounds_bp)
    app.register_blueprint(exports_bp)
    app.register_blueprint(corrections_bp)
    app.register_blueprint(retention_bp)
    app.register_blueprint(accounts_bp)
    init_audit(app)
    init_timing(app, always=settings.server_timing)
    return app
