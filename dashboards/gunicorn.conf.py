"""gunicorn settings for the dashboard; every value can be set from the environment.

    TUNER_SERVICE_STORAGE=postgresql+psycopg://... gunicorn -c dashboards/gunicorn.conf.py

The dashboard has no authentication: the default bind is loopback, and a warning is logged
for any other address. Publish it through an authenticating reverse proxy.
"""

from __future__ import annotations

import os
from typing import Any

wsgi_app = "dashboards.wsgi:application"
bind = os.environ.get("TUNER_SERVICE_DASHBOARD_BIND", "127.0.0.1:8080").split(",")
# Each open tab polls every few seconds; a few sync workers serve a team.
workers = int(os.environ.get("TUNER_SERVICE_DASHBOARD_WORKERS", "2"))
# Importances and plots of a large study are computed per request and can take a while.
timeout = int(os.environ.get("TUNER_SERVICE_DASHBOARD_TIMEOUT", "120"))
graceful_timeout = 30
# Not preloaded: each worker must open its own database connections, not share forked ones.
preload_app = False
accesslog = os.environ.get("TUNER_SERVICE_DASHBOARD_ACCESS_LOG", "-")


def on_starting(server: Any) -> None:
    """Check the storage once in the master: a bad URL stops gunicorn with one line instead
    of every worker failing to boot."""
    from tuner_service.dashboard import storage_url_from_env
    from tuner_service.errors import BadInput
    from tuner_service.storage import mask_password, open_storage

    try:
        storage = open_storage(storage_url_from_env(), create=False)
    except BadInput as exc:
        server.log.error("tuner-service dashboard: %s", mask_password(str(exc)))
        raise SystemExit(4) from None  # gunicorn's APP_LOAD_ERROR
    storage.engine.dispose()  # the workers open their own connections after the fork


def when_ready(server: Any) -> None:
    from tuner_service.dashboard import is_loopback

    for address in bind:
        host = "localhost" if address.startswith("unix:") else address.rsplit(":", 1)[0]
        if not is_loopback(host):
            server.log.warning("the dashboard has no authentication and listens on %s; put it behind an "
                               "authenticating proxy or bind to 127.0.0.1", address)
