"""nnInteractive's remote protocol (``nninteractive-client`` 2.6) under ``/nninteractive`` on the same port.

``nnia`` (the array format), ``schemas`` (JSON bodies and ``X-Meta``), ``prompts`` (prompts checked
against the image), ``lease`` (one lease's state over our interactive session) and ``app`` (routes,
body limit and error format). ``server.app`` places ``make_app``'s routes under ``PREFIX`` with
``server.mounts.PrefixMount``.
"""

from tsfm_backend.server.nninteractive.app import PREFIX, make_app

__all__ = ["PREFIX", "make_app"]
