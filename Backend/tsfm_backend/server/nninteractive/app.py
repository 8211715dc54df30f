"""nnInteractive's remote protocol (``nninteractive-client`` 2.6, SlicerNNInteractive's Remote mode) over our engine.

``tsfm-backend serve`` answers it under ``PREFIX`` on its own port: a client pointed at
``http://HOST:PORT/nninteractive`` with the server's token as its API key claims a lease, sends an
image and prompts, and gets back the changed box of the mask, as from nnInteractive's own server.
What the protocol needs maps onto what ``/v1`` already has:

- a lease is one of our sessions (``server.sessions``): the same capacity (``max_sessions``, 503 +
  Retry-After, the client's ``ServerAtCapacityError``), the same liveness and idle clocks, and 410 for
  a lease that is gone or unknown (``SessionExpiredError``); the client's heartbeat renews liveness;
- every model call runs on the one model worker with the interaction timeout, behind the same gates
  as ``/v1`` (``max_model_requests``, ``max_uploads``: 503 at once when full);
- arrays travel as NNIA (``nnia.py``); every declared size is checked before anything is decoded;
- prompts the engine does not take (scribbles, lassos, negative boxes, lines) are converted
  (``inference.prompt_conversion``); ``capabilities`` announces only what works.

Errors answer ``{"detail": message}`` as nnInteractive's server does (the client shows it for 410 and
503): 400 for a prompt or array that cannot apply, 401 for a missing or wrong key, 413 for an array
over the limits, 422 for a body of the wrong shape. ``lease_status`` only reads the lease: unlike
a heartbeat, it keeps no lease alive.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ValidationError

from tsfm_backend import __version__
from tsfm_backend.checkpoints import LoadedModel
from tsfm_backend.model_card import ModelCard
from tsfm_backend.server.bearer import bearer_check
from tsfm_backend.server.error_answers import add_error_handlers
from tsfm_backend.server.errors import (
    BadInput,
    Expired,
    Invalid,
    Misconfigured,
    NotFound,
    ServiceError,
    TooLarge,
)
from tsfm_backend.server.limits import BodySizeLimit, Gate
from tsfm_backend.server.nninteractive import nnia, prompts
from tsfm_backend.server.nninteractive import schemas as s
from tsfm_backend.server.nninteractive.lease import Change, LeaseEngine
from tsfm_backend.server.services import Services, describe_validation
from tsfm_backend.server.sessions import Session
from tsfm_backend.server.settings import Settings
from tsfm_backend.store import DEFAULT_INTERACTIVE_MODEL
from tsfm_backend.volume import Volume, VolumeError

T = TypeVar("T")

PREFIX = "/nninteractive"
META_HEADER = "X-Meta"
LEASE_HEADER = "X-Lease-Token"
OCTET_STREAM = "application/octet-stream"
LEASE_ID = re.compile(r"[0-9a-f]{32}")
SCRIBBLE_THICKNESS = [2, 2, 2]

Token = Annotated[str | None, Header(alias=LEASE_HEADER)]


def capabilities(card: ModelCard, do_autozoom: bool = True) -> dict[str, Any]:
    """The capability answer for ``card`` (a ``click_unet`` model): every prompt kind, via conversion.

    ``channel_mapping`` is empty: our models do not take nnInteractive's interaction channels, and
    the client only copies it. Initial segmentations are taken (a mask to refine by prompts); a
    model never refines one without a prompt, hence no zero-shot refinement.
    """
    from tsfm_backend.models.click_unet import PROMPT_CHANNELS

    return {
        "supported_interactions": {"points": True, "bbox2d": True, "bbox3d": True, "scribble": True, "lasso": True},
        "channel_mapping": {},
        "num_interaction_channels": len(PROMPT_CHANNELS),
        "supports_initial_label": True,
        "supports_zero_shot_label_refinement": False,
        "preferred_scribble_thickness": SCRIBBLE_THICKNESS,
        "interaction_decay": None,
        "patch_size": list(card.patch_size) if card.patch_size else None,
        "do_autozoom": do_autozoom,
        "inference_session_version": f"tsfm-backend {__version__} ({card.id})",
        "license": card.license,
        "supports_undo": True,
    }


def make_app(settings: Settings, services: Services, model_gate: Gate, upload_gate: Gate) -> FastAPI:
    """The protocol's routes (paths relative to ``PREFIX``) over ``services``, sharing ``/v1``'s gates."""
    app = FastAPI(title="tsfm-backend: nnInteractive protocol", openapi_url=None, docs_url=None, redoc_url=None)
    # Arrays (application/octet-stream) up to max_request_bytes, any other body up to 1 MiB.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes, large_media_type=OCTET_STREAM.encode(),
                       large_name="an array", error_key="detail")
    add_error_handlers(app, "detail", {nnia.ArrayTooLarge: 413, nnia.NNIAError: 400})
    auth = [Depends(bearer_check(settings.token, "Invalid bearer token: the API key differs from the server's --token",
                                 missing="Missing bearer token: set the API key to the server's --token"))]
    leases = _Leases(settings, services)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    @app.get("/capabilities", dependencies=auth)
    def capability_snapshot() -> dict:
        return capabilities(_click_model(services).card)

    @app.post("/claim", dependencies=auth)
    def claim() -> dict:
        loaded = _click_model(services)
        session = services.sessions.add(loaded.card.id, "", LeaseEngine(settings.max_undo_steps))
        return {"lease_token": session.id, "idle_timeout_seconds": settings.session_idle_s,
                "liveness_timeout_seconds": settings.session_liveness_s, "max_sessions": settings.max_sessions}

    @app.post("/release", dependencies=auth)
    async def release(token: Token = None) -> dict:
        try:  # idempotent: a lease already gone is released too
            services.sessions.close(leases.get(token, renew=False).id)
        except ServiceError:
            pass
        return {"released": True}

    @app.post("/heartbeat", dependencies=auth)
    async def heartbeat(token: Token = None) -> dict:
        return {"remaining_seconds": leases.idle_left(leases.get(token, renew=True))}

    @app.get("/lease_status", dependencies=auth)
    async def lease_status(token: Token = None) -> dict:
        return {"remaining_seconds": leases.idle_left(leases.get(token, renew=False)),
                "idle_timeout_seconds": settings.session_idle_s}

    @app.post("/set_image", dependencies=auth)
    async def set_image(request: Request, token: Token = None) -> dict:
        meta = _meta(request, s.ImageMeta)
        with model_gate.slot(), upload_gate.slot():
            body = await request.body()
            return await run_in_threadpool(leases.set_image, token, meta, body)

    @app.post("/set_target_buffer", dependencies=auth)
    def set_target_buffer(request: s.TargetBufferRequest, token: Token = None) -> dict:
        dtype = _buffer_dtype(request.dtype)
        leases.run(token, lambda lease: lease.set_buffer(tuple(request.shape), dtype), on_worker=False)
        return {}

    @app.post("/set_do_autozoom", dependencies=auth)
    def set_do_autozoom(request: s.AutozoomRequest, token: Token = None) -> dict:
        leases.run(token, lambda lease: setattr(lease, "do_autozoom", request.do_autozoom), on_worker=False)
        return {}

    @app.post("/reset_interactions", dependencies=auth)
    async def reset_interactions(token: Token = None) -> dict:
        with model_gate.slot():
            await run_in_threadpool(leases.run, token, LeaseEngine.reset_interactions)
        return {}

    @app.post("/undo", dependencies=auth)
    async def undo(token: Token = None) -> Response:
        with model_gate.slot():
            return await run_in_threadpool(leases.answer, token, LeaseEngine.undo_last_prompt)

    @app.post("/predict", dependencies=auth)
    async def predict(request: s.PredictRequest, token: Token = None) -> Response:
        with model_gate.slot():  # force_full_refine: every queued prompt runs in full anyway
            return await run_in_threadpool(leases.answer, token, LeaseEngine.run_queued)

    @app.post("/add_point_interaction", dependencies=auth)
    async def add_point(request: s.PointRequest, token: Token = None) -> Response:
        def build(lease: LeaseEngine) -> prompts.PendingPrompt:
            return prompts.point_prompt(request.coordinates, request.include_interaction, lease.require_image_shape())

        with model_gate.slot():
            return await run_in_threadpool(leases.answer, token, _queue_then(build, request.run_prediction))

    @app.post("/add_bbox_interaction", dependencies=auth)
    async def add_bbox(request: s.BoxRequest, token: Token = None) -> Response:
        def build(lease: LeaseEngine) -> prompts.PendingPrompt:
            return prompts.box_prompt(request.bbox_coords, request.include_interaction, lease.require_image_shape(), lease.spacing)

        with model_gate.slot():
            return await run_in_threadpool(leases.answer, token, _queue_then(build, request.run_prediction))

    async def answer_array(request: Request, token: str | None, schema: type[BaseModel],
                           action: Callable[[Any, np.ndarray], Callable[[LeaseEngine], Change]]) -> Response:
        """A request whose body is a (K, J, I) NNIA array and whose ``X-Meta`` is ``schema``: the lease runs
        the action that ``action(meta, array)`` makes; the array is decoded on a pool thread, inside both gates."""
        meta = _meta(request, schema)
        with model_gate.slot(), upload_gate.slot():
            body = await request.body()

            def respond() -> Response:
                return leases.answer(token, action(meta, _decoded(body, settings.max_array_bytes, 3)))

            return await run_in_threadpool(respond)

    @app.post("/add_scribble_interaction", dependencies=auth)
    async def add_scribble(request: Request, token: Token = None) -> Response:
        return await answer_array(request, token, s.MaskMeta, partial(_mask_prompt, "scribble"))

    @app.post("/add_lasso_interaction", dependencies=auth)
    async def add_lasso(request: Request, token: Token = None) -> Response:
        return await answer_array(request, token, s.MaskMeta, partial(_mask_prompt, "lasso"))

    @app.post("/add_initial_seg_interaction", dependencies=auth)
    async def add_initial_seg(request: Request, token: Token = None) -> Response:
        return await answer_array(request, token, s.InitialSegMeta, _initial_segmentation)

    return app


class _Leases:
    """Lease lookup, and lease actions run the one way every session action runs (``Services.on_session``)."""

    def __init__(self, settings: Settings, services: Services) -> None:
        self.settings, self.services = settings, services

    def get(self, token: str | None, renew: bool) -> Session:
        """The live lease, its liveness renewed when ``renew`` (a heartbeat) and untouched otherwise.

        Raises:
            Expired: 410 when the token is missing, unknown, expired or not a lease.
        """
        if not token or not LEASE_ID.fullmatch(token):
            raise Expired("lease token missing or malformed: claim a new lease")
        sessions = self.services.sessions
        try:
            session = sessions.get(token, active=False) if renew else sessions.peek(token)
        except NotFound:
            raise Expired("lease expired or unknown: claim a new lease") from None
        if not isinstance(session.engine, LeaseEngine):
            raise Expired(f"{token} is a /v1 session, not an nnInteractive lease: claim a lease")
        return session

    def idle_left(self, session: Session) -> float:
        """Seconds until the idle clock runs out (nnInteractive's ``remaining_seconds``)."""
        left = session.last_active + self.settings.session_idle_s - self.services.sessions.clock()
        return round(max(0.0, left), 3)

    def run(self, token: str | None, action: Callable[[LeaseEngine], T], on_worker: bool = True) -> T:
        """``action(lease)`` through ``Services.on_session`` (on the model worker unless ``on_worker`` is False).

        A ValueError (a prompt or array that cannot apply) answers 400; the engine's own checks run
        before it changes anything, so a refused request changes nothing.
        """
        return self.on_lease(token, lambda session: action(session.engine), on_worker)

    def on_lease(self, token: str | None, action: Callable[[Session], T], on_worker: bool = True) -> T:
        """``action(session)`` of the lease ``token``, which is checked to be one first (410 otherwise)."""
        return self.services.on_session(self.get(token, renew=False).id, action, on_worker)

    def answer(self, token: str | None, action: Callable[[LeaseEngine], Change]) -> Response:
        """Run ``action`` and answer with the changed box of the mask, in the client's buffer dtype."""
        change, buffer = self.run(token, lambda lease: (action(lease), lease.buffer))
        return _prediction_response(change, buffer[1] if buffer is not None else None)

    def set_image(self, token: str | None, meta: s.ImageMeta, body: bytes) -> dict:
        spec = nnia.read_spec(body)
        if len(spec.shape) != 4 or spec.shape[0] != 1:
            raise BadInput(f"image of shape {list(spec.shape)}: send one channel, shaped [1, K, J, I] (these "
                           "models take a single image channel)")
        if spec.dtype.kind not in "iuf":
            raise BadInput(f"image dtype {spec.dtype.name} is not numeric")
        session = self.get(token, renew=False)  # before decoding: a body without a lease costs nothing
        store = self.services.images
        if spec.nbytes > store.max_bytes:
            raise TooLarge(f"image of {spec.nbytes} bytes exceeds the server's image store of {store.max_bytes} bytes")
        array = _decoded(body, self.settings.max_array_bytes, 4)[0]
        spacing_kji = tuple(meta.image_properties.spacing or (1.0, 1.0, 1.0))
        try:
            volume = Volume(array.astype(np.float32) if array.dtype == np.float16 else array, spacing_kji[::-1])
        except VolumeError as error:
            raise BadInput(f"image rejected: {error}") from error
        image_id, _ = store.put(volume)
        loaded = self.services.models.get(session.model)

        def open_session(lease: Session) -> None:
            engine = self.services.engine.open_session(loaded, volume, self.services.device, None,
                                                       self.settings.max_undo_steps)
            lease.engine.set_image(engine, volume.shape, spacing_kji)  # type: ignore[attr-defined]
            lease.image_id = image_id

        self.on_lease(token, open_session)
        return {"original_image_shape": [1, *volume.shape]}


def _queue_then(build: Callable[[LeaseEngine], prompts.PendingPrompt | None],
                run_prediction: bool) -> Callable[[LeaseEngine], Change]:
    """Queue the prompt ``build`` makes, then run the queue unless the client defers it to ``/predict``."""

    def action(lease: LeaseEngine) -> Change:
        prompt = build(lease)
        if prompt is not None:
            lease.queue(prompt)
        return lease.run_queued() if run_prediction else Change(False)

    return action


def _mask_prompt(kind: str, meta: s.MaskMeta, mask: np.ndarray) -> Callable[[LeaseEngine], Change]:
    """Queue a scribble or lasso ``mask`` (over ``meta.interaction_bbox``), then run the queue as ``meta`` says."""

    def build(lease: LeaseEngine) -> prompts.PendingPrompt | None:
        return prompts.mask_prompt(kind, mask, meta.interaction_bbox, meta.include_interaction,
                                   lease.require_image_shape(), lease.spacing)

    return _queue_then(build, meta.run_prediction)


def _initial_segmentation(meta: s.InitialSegMeta, seed: np.ndarray) -> Callable[[LeaseEngine], Change]:
    """Make ``seed`` (K, J, I, nonzero = object) the object's mask: one undoable step."""

    def seed_lease(lease: LeaseEngine) -> Change:
        change = lease.initial_segmentation(seed)
        # The client already copied the segmentation into its buffer: without a prediction there is
        # nothing to send back.
        return change if meta.run_prediction else Change(False)

    return seed_lease


def _prediction_response(change: Change, dtype: np.dtype | None) -> Response:
    """The mask over the changed box as NNIA, with ``X-Meta`` {ran_prediction, bbox (half-open), dtype, shape}.

    Nothing changed, or no target buffer to write into: an empty body and ``bbox`` null.
    """
    meta: dict[str, Any] = {"ran_prediction": change.ran, "bbox": None}
    body = b""
    if change.mask is not None and change.origin is not None and dtype is not None:
        crop = change.mask.astype(dtype, copy=False)
        meta.update(bbox=[[o, o + n] for o, n in zip(change.origin, crop.shape, strict=True)],
                    dtype=crop.dtype.name, shape=list(crop.shape))
        body = nnia.pack(crop)
    return Response(body, media_type=OCTET_STREAM, headers={META_HEADER: json.dumps(meta, separators=(",", ":"))})


def _click_model(services: Services) -> LoadedModel:
    """The model every lease uses: the default interactive model, else the first click model served."""
    ids = services.models.ids
    for model_id in sorted(ids, key=lambda i: i != DEFAULT_INTERACTIVE_MODEL):
        loaded = services.models.get(model_id)
        if loaded.card.kind == "promptable" and loaded.card.family == "click_unet":
            return loaded
    raise Misconfigured("this server serves no click model (family click_unet) for nnInteractive's protocol; "
                        f"start it with --models {DEFAULT_INTERACTIVE_MODEL}")


def _buffer_dtype(name: str) -> np.dtype:
    try:
        dtype = np.dtype(name)
    except TypeError:
        raise BadInput(f"target buffer dtype {name!r} is not a numpy dtype") from None
    if dtype.kind not in "biu":
        raise BadInput(f"target buffer dtype {dtype.name}: it must be bool or an integer type")
    return dtype


def _decoded(body: bytes, max_bytes: int, ndim: int) -> np.ndarray:
    """The NNIA ``body`` of ``ndim`` dimensions; its errors answer 413 (over ``max_bytes``) or 400."""
    array = nnia.unpack(body, max_bytes, max_ndim=ndim)
    if array.ndim != ndim:
        raise BadInput(f"array has {array.ndim} dimensions; this route takes {ndim}")
    return array


def _meta(request: Request, schema: type[BaseModel]) -> Any:
    """The ``X-Meta`` header parsed into ``schema`` (an absent header is an empty object)."""
    raw = request.headers.get(META_HEADER)
    try:
        return schema.model_validate(json.loads(raw) if raw else {})
    except (ValueError, RecursionError) as error:
        if isinstance(error, ValidationError):
            raise Invalid(f"{META_HEADER}: {describe_validation(error.errors())}") from error
        raise BadInput(f"{META_HEADER} is not valid JSON") from error
