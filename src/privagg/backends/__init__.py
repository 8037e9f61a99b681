"""Secure-aggregation backends. Import them through :func:`privagg.get_backend`."""
