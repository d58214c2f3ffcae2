"""``celery -A shop_flask.make_celery worker``: the Celery app of a Flask app built by the factory."""

from __future__ import annotations

from shop_flask import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
