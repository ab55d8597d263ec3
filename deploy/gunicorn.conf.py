"""Gunicorn config for deployments: the settings live in app/gunicorn_conf.py (one place).

Run: gunicorn -c deploy/gunicorn.conf.py 'app.factory:create_app()'
"""

from app.gunicorn_conf import *  # noqa: F403
