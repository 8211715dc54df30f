"""tsfm-backend: 3D tumour and organ segmentation models behind a versioned HTTP API.

Importing the package is cheap: torch and the server stack load only when a command needs them.
"""

__version__ = "0.1.0"
