"""MONAI Label's REST API, the part its 3D Slicer plugin needs for inference, served under ``/monailabel``.

A user of MONAI Label's Slicer plugin types ``http://<host>:<port>/monailabel`` as the server address
(the plugin keeps the path and appends ``/info/``, ``/infer/...``): our automatic models appear as
*segmentation* models, our click models as *deepgrow* models. See Backend/README.md, "MONAI Label's
Slicer plugin", for what works and what does not. ``server.app`` places ``make_app``'s routes under
``PREFIX`` with ``server.mounts.PrefixMount``.
"""

from tsfm_backend.server.monailabel.app import make_app

PREFIX = "/monailabel"

__all__ = ["PREFIX", "make_app"]
