"""gunicorn settings for the dashboard; every value can be set from the environment.

    TUNER_SERVICE_STORAGE=postgresql+psycopg://... gunicorn -c dashboards/gunicorn.conf.py

The default bind is loopback. Any other address needs a login
(``TUNER_SERVICE_DASHBOARD_PASSWORD`` or ``..._PASSWORD_FILE``): without one gunicorn refuses
to start, unless ``TUNER_SERVICE_DASHBOARD_ALLOW_UNAUTHENTICATED=1`` says a proxy or firewall
guards the port. ``TUNER_SERVICE_DASHBOARD_READ_ONLY=1`` refuses every write.
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
    """Check the storage and the access settings once in the master, before it listens: a bad
    URL, an unreadable password file or an unguarded public bind stops gunicorn with one line
    instead of every worker failing to boot."""
    from tuner_service.dashboard import (
        ALLOW_UNAUTHENTICATED_ENV,
        Access,
        check_exposure,
        env_flag,
        storage_url_from_env,
    )
    from tuner_service.errors import BadInput
    from tuner_service.storage import mask_password, open_storage

    try:
        storage = open_storage(storage_url_from_env(), create=False)
        access = Access.from_env()
        allow = env_flag(ALLOW_UNAUTHENTICATED_ENV)
        for address in server.cfg.bind:  # the bind actually used: GUNICORN_CMD_ARGS/--bind override this file
            if address.startswith(("unix:", "fd://")):
                continue
            warning = check_exposure(address.rsplit(":", 1)[0], access, allow_unauthenticated=allow)
            if warning:
                server.log.warning("tuner-service dashboard: %s", warning)
    except BadInput as exc:
        server.log.error("tuner-service dashboard: %s", mask_password(str(exc)))
        raise SystemExit(4) from None  # gunicorn's APP_LOAD_ERROR
    storage.engine.dispose()  # the workers open their own connections after the fork
    server.log.info("tuner-service dashboard: login %s, %s", f"required (user {access.user!r})"
                    if access.login_required else "off", "read-only" if access.read_only else "read-write")
