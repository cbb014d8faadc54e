"""Production entry for the dashboard: ``gunicorn -c dashboards/gunicorn.conf.py``
(or ``gunicorn dashboards.wsgi:application`` with your own settings).

Configured by the environment, as a process manager passes it:

- ``TUNER_SERVICE_STORAGE`` (required): the storage URL the workers write to. Unlike the CLI
  there is no ``./tuner.db`` fallback: a service must fail on a missing variable, not show an
  empty dashboard.
- ``TUNER_SERVICE_ARTIFACTS`` (optional): the artifact directory (learning curves, models);
  for SQLite the default is the directory beside the database file, as for the CLI.
- ``TUNER_SERVICE_DASHBOARD_PASSWORD`` or ``TUNER_SERVICE_DASHBOARD_PASSWORD_FILE`` (optional):
  require a login (basic auth as ``TUNER_SERVICE_DASHBOARD_USER``, default ``tuner``, or
  ``Authorization: Bearer <password>``); ``TUNER_SERVICE_DASHBOARD_READ_ONLY=1``: refuse writes.

A bad configuration is one logged line and gunicorn's "app failed to load" exit code, so the
master stops instead of rebooting workers forever. (``gunicorn.conf.py`` checks the same in
the master first, so with it the workers never get that far.)
"""

from __future__ import annotations

import logging

from tuner_service.dashboard import Access, make_app, storage_url_from_env
from tuner_service.errors import BadInput
from tuner_service.storage import mask_password

#: gunicorn's Arbiter.APP_LOAD_ERROR.
APP_LOAD_ERROR = 4

try:
    # Artifacts: make_app reads $TUNER_SERVICE_ARTIFACTS when given none.
    application = make_app(storage_url_from_env(), access=Access.from_env())
except BadInput as exc:
    logging.getLogger("gunicorn.error").error("tuner-service dashboard: %s", mask_password(str(exc)))
    raise SystemExit(APP_LOAD_ERROR) from None
