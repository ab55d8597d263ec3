"""ebiw-capture: encounter-based visible-light imaging.

The WSGI app is built by :func:`app.factory.create_app`; this package itself imports nothing,
so that importing ``app.pipeline`` stays free of Flask and the database.
"""
