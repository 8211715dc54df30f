"""``tsfm-backend serve``: the HTTP API for the Slicer module, on this machine or a GPU server."""

from __future__ import annotations

import argparse
import logging

HELP = "serve models over HTTP (/v1) for the Slicer module and other clients"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only); others need --token")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")
    parser.add_argument("--token", default=None,
                        help="bearer token clients must send (Authorization: Bearer T); also read from "
                             "$TSFM_TOKEN so it stays out of the process list")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback --host without a token (trusted networks only; logs a warning)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--max-sessions", type=int, default=8, help="interactive sessions at once (default 8)")
    parser.add_argument("--max-queued-jobs", type=int, default=8, help="automatic jobs waiting at once (default 8)")
    parser.add_argument("--session-timeout", type=float, default=120.0,
                        help="seconds without any request (heartbeat included) before a session expires")
    parser.add_argument("--idle-timeout", type=float, default=1800.0,
                        help="seconds without an interaction before a session expires")
    parser.add_argument("--max-request-mb", type=int, default=1024, help="largest request body in MiB")
    parser.add_argument("--max-windows", type=int, default=10_000,
                        help="sliding windows one automatic job may run (default 10000); more answer 413")
    parser.add_argument("--max-job-gb", type=float, default=16.0,
                        help="estimated working memory one automatic job may need, GiB (default 16)")
    parser.add_argument("--max-model-requests", type=int, default=16,
                        help="interactive requests waiting for the model at once (default 16); more answer 503")
    parser.add_argument("--max-uploads", type=int, default=2,
                        help="image uploads and starting masks received at once (default 2); more answer 503")
    parser.add_argument("--max-undo-steps", type=int, default=32,
                        help="undo steps kept per object of a session (default 32); older ones are forgotten")
    parser.add_argument("--models", nargs="+", default=None, metavar="ID_OR_PATH",
                        help="models to serve (default: every installed and bundled model)")


def run(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from tsfm_backend.cli import CommandError
    from tsfm_backend.device import describe_device, resolve_device
    from tsfm_backend.server.app import make_app
    from tsfm_backend.server.services import ModelRegistry, Services
    from tsfm_backend.server.settings import Settings, SettingsError
    from tsfm_backend.store import installed_models

    try:
        settings = Settings(
            host=args.host, port=args.port, token=args.token or os.environ.get("TSFM_TOKEN") or None,
            insecure=args.insecure, device=args.device, max_sessions=args.max_sessions,
            max_queued_jobs=args.max_queued_jobs, session_liveness_s=args.session_timeout,
            session_idle_s=args.idle_timeout, max_request_bytes=args.max_request_mb << 20,
            max_windows=args.max_windows, max_job_bytes=int(args.max_job_gb * (1 << 30)),
            max_model_requests=args.max_model_requests, max_uploads=args.max_uploads,
            max_undo_steps=args.max_undo_steps,
        )
    except SettingsError as error:
        raise CommandError(str(error)) from error
    settings.warn_if_exposed()
    device = resolve_device(settings.device)
    model_ids = args.models if args.models is not None else [card.id for card in installed_models()]
    models = ModelRegistry.load(model_ids, device, skip_broken=args.models is None)
    if not models.ids:
        log.warning("no models to serve: install one with 'tsfm-backend import' or pass --models")
    log.info("serving %d model(s) on %s: %s", len(models.ids), describe_device(device)["name"],
             ", ".join(models.ids) or "none")
    services = Services.start(settings, models, device)
    app = make_app(settings, services)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False,
                timeout_graceful_shutdown=5)
    return 0
