"""The versioned HTTP API (``/v1``) over the inference engine; start it with ``tsfm-backend serve``.

``settings`` (configuration), ``wire`` (binary array frames), ``schemas`` (JSON bodies), the
services (``images``, ``jobs``, ``sessions``, ``worker``, ``engine``, ``services``) and ``app``
(routes only). The protocol is documented in ``Backend/README.md``.
"""
