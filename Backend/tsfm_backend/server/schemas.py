"""Pydantic models of every JSON body and frame header of the ``/v1`` API.

Requests forbid unknown fields and non-finite numbers, ids are hex strings made by the server, and
voxel coordinates are (k, j, i) indices of the uploaded image, (K, J, I) = (z, y, x).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

HEX_ID = r"^[0-9a-f]{32}$"
MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
# Geometry an uploaded image may have. 0.01-100 mm covers micro-CT to the thickest clinical slabs;
# spacings beyond it are no medical image and would turn a click's region or a job's resampled grid
# into billions of voxels. Origins past a kilometre are corrupt headers.
MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 100.0
MAX_ORIGIN_MM = 1e6
# Largest |D^T D - I| entry of a direction matrix still taken as orthonormal (float32 round trips of
# DICOM orientations stay far below it).
ORTHONORMAL_TOLERANCE = 1e-3
OriginMm = Annotated[float, Field(ge=-MAX_ORIGIN_MM, le=MAX_ORIGIN_MM, allow_inf_nan=False)]
Index = Annotated[int, Field(ge=0, le=1 << 20, strict=True)]
Voxel = tuple[Index, Index, Index]
ObjectId = Annotated[int, Field(ge=1, le=255, strict=True)]
ImageId = Annotated[str, Field(pattern=HEX_ID)]
ModelId = Annotated[str, Field(pattern=MODEL_ID)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArrayMeta(Strict):
    """The ``array`` object of a frame header (checked again, byte by byte, by ``wire.decode_array``)."""

    dtype: str
    shape: tuple[Index, Index, Index]
    compression: Literal["zlib", "gzip", "none"] = "zlib"


class ImageUpload(Strict):
    """Header of ``POST /v1/images``: ITK geometry (spacing per I, J, K in mm; LPS origin; direction columns)."""

    array: ArrayMeta
    spacing: tuple[FiniteFloat, FiniteFloat, FiniteFloat]
    origin: tuple[OriginMm, OriginMm, OriginMm] = (0.0, 0.0, 0.0)
    direction: tuple[FiniteFloat, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @field_validator("spacing")
    @classmethod
    def _sane_spacing(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        for axis, mm in zip("IJK", value, strict=True):
            if not MIN_SPACING_MM <= mm <= MAX_SPACING_MM:
                raise ValueError(f"spacing along {axis} is {mm:g} mm; this server takes {MIN_SPACING_MM:g} to "
                                 f"{MAX_SPACING_MM:g} mm per axis")
        return value

    @field_validator("direction")
    @classmethod
    def _orthonormal(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) != 9:
            raise ValueError(f"direction must hold 9 numbers (3x3 row-major), got {len(value)}")
        columns = [value[c::3] for c in range(3)]
        deviation = max(abs(math.fsum(a * b for a, b in zip(columns[m], columns[n], strict=True)) - (m == n))
                        for m in range(3) for n in range(3))
        if deviation > ORTHONORMAL_TOLERANCE:
            raise ValueError(f"direction is not orthonormal (its columns must be unit vectors at right angles; "
                             f"largest deviation {deviation:.3g}, tolerance {ORTHONORMAL_TOLERANCE:g})")
        return value


class ImageInfo(BaseModel):
    image_id: str
    exists: bool = Field(description="true when the server already held this image (upload skipped)")
    dtype: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]


class JobOptions(Strict):
    """Options of an automatic job (the fields of ``inference.segmenter.SegmentOptions``)."""

    step: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = Field(
        None, description="window stride as a fraction of the patch; null: the model's own (0.5 for most)")
    tta: StrictBool = False
    batch_size: Annotated[int, Field(ge=1, le=64, strict=True)] = 1
    fast: StrictBool = False
    amp: StrictBool = True
    largest_component: StrictBool = False
    fill_holes: StrictBool = False
    crop_to_body: StrictBool = False
    skip_outside_body: StrictBool = True


class JobCreate(Strict):
    image_id: ImageId
    model: ModelId
    options: JobOptions = Field(default_factory=JobOptions)


class JobStatus(BaseModel):
    job_id: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float = Field(ge=0, le=1)
    message: str
    model: str
    image_id: str
    queue_position: int | None = Field(None, description="jobs ahead of this one while queued")
    seconds: float | None = Field(None, description="run time once finished")


class SessionCreate(Strict):
    image_id: ImageId
    model: ModelId
    modality: Literal["CT", "MR", "PET", "PT"] | None = Field(
        None, description="the image's modality (DICOM's 'PT' is PET); detected from the image when left out")


class SessionInfo(BaseModel):
    session_id: str
    model: str
    image_id: str
    modality: str | None = Field(None, description="the modality the model normalises the image as, where it asks")
    liveness_s: float = Field(description="expires after this long without any request (heartbeat included)")
    idle_s: float = Field(description="expires after this long without an interaction")


class Interaction(Strict):
    """One prompt: a positive or negative point, or a box given by two inclusive corners."""

    kind: Literal["point", "box"]
    positive: StrictBool = True
    point: Voxel | None = None
    box: tuple[Voxel, Voxel] | None = None
    object_id: ObjectId = 1

    @model_validator(mode="after")
    def _geometry_matches_kind(self) -> Interaction:
        if self.kind == "point" and (self.point is None or self.box is not None):
            raise ValueError("a 'point' interaction needs 'point' [k, j, i] and no 'box'")
        if self.kind == "box" and (self.box is None or self.point is not None):
            raise ValueError("a 'box' interaction needs 'box' [[k0, j0, i0], [k1, j1, i1]] and no 'point'")
        return self


class SeededInteraction(Strict):
    """Header of a framed ``POST .../interactions``: the starting mask (K, J, I) is the payload."""

    array: ArrayMeta
    object_id: ObjectId = 1
    interaction: Interaction | None = None

    @model_validator(mode="after")
    def _same_object(self) -> SeededInteraction:
        if self.interaction is not None and self.interaction.object_id != self.object_id:
            raise ValueError("interaction.object_id must equal the starting mask's object_id")
        return self


class ObjectRef(Strict):
    object_id: ObjectId = 1


class ResetRequest(Strict):
    object_id: ObjectId | None = Field(None, description="null resets every object of the session")


class MaskCropHeader(BaseModel):
    """Header of a mask-crop frame: the crop's payload sits at ``origin`` (k, j, i) of the image grid."""

    object_id: int
    origin: tuple[int, int, int]
    image_shape: tuple[int, int, int]


class LeaseInfo(BaseModel):
    session_id: str
    expires_in_s: float


class ModelInfo(BaseModel):
    id: str
    kind: Literal["automatic", "promptable"]
    family: str
    classes: dict[str, str]
    license: str
    description: str
    patch_size: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    default: bool = Field(False, description="the promptable model to offer first")
    serves_clicks: bool = Field(False, description="true: POST /v1/sessions takes this model (every promptable "
                                "model, and automatic ones such as VISTA3D whose weights also take clicks)")


class CatalogInfo(BaseModel):
    """One model of the backend's catalog, and whether this server already has it."""

    id: str
    title: str = Field(description="what the model is, in one line")
    kind: str = Field(description="automatic or promptable")
    family: str
    license: str
    redistributable: bool = Field(description="false: POST /v1/downloads needs accept_license true")
    homepage: str
    notes: str = Field(description="how to get it by hand when it is not downloadable, and caveats")
    size_bytes: int | None = Field(description="all files together; null when the catalog does not know")
    downloadable: bool = Field(description="false: download it by hand and run `tsfm-backend import`")
    installed: bool = Field(description="present in the server's model store")
    served: bool = Field(description="listed by GET /v1/models now")


class DownloadCreate(Strict):
    model: ModelId = Field(description="a catalog id from GET /v1/catalog")
    accept_license: StrictBool = Field(False, description="the user accepted a non-redistributable license")


class DownloadStatus(BaseModel):
    download_id: str
    model: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    bytes_done: int = Field(ge=0)
    bytes_total: int | None = Field(None, description="null until the size is known")
    message: str
    seconds: float | None = Field(None, description="run time once finished")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    api_version: str


class Info(BaseModel):
    api_version: str
    versions: dict[str, str]
    device: dict[str, object]
    models: list[str]
    limits: dict[str, int | float]
    queued_jobs: int
    sessions: int
    auth: bool
