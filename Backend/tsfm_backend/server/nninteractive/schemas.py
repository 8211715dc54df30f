"""The JSON bodies and ``X-Meta`` headers of nnInteractive's protocol (client 2.6), validated."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, FiniteFloat

Pair = Annotated[list[FiniteFloat], Field(min_length=2, max_length=2)]
IntPair = Annotated[list[int], Field(min_length=2, max_length=2)]


class PromptFlags(BaseModel):
    """Flags every prompt carries; ``override_capability_checks`` is accepted and has no effect here."""

    include_interaction: bool
    run_prediction: bool = True
    override_capability_checks: bool = False


class PointRequest(PromptFlags):
    coordinates: Annotated[list[FiniteFloat], Field(min_length=3, max_length=3)]


class BoxRequest(PromptFlags):
    bbox_coords: Annotated[list[Pair], Field(min_length=3, max_length=3)]


class MaskMeta(PromptFlags):
    """``X-Meta`` of a scribble or lasso: its half-open box in the image, or None for the whole image."""

    interaction_bbox: Annotated[list[IntPair], Field(min_length=3, max_length=3)] | None = None


class InitialSegMeta(BaseModel):
    run_prediction: bool = False
    override_capability_checks: bool = False


class ImageProperties(BaseModel):
    """What the client says about its image; ``spacing`` in mm in the array's axis order."""

    spacing: Annotated[list[Annotated[float, Field(gt=0, allow_inf_nan=False)]],
                       Field(min_length=3, max_length=3)] | None = None


class ImageMeta(BaseModel):
    image_properties: ImageProperties = Field(default_factory=ImageProperties)


class TargetBufferRequest(BaseModel):
    shape: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=3, max_length=3)]
    dtype: str


class AutozoomRequest(BaseModel):
    do_autozoom: bool


class PredictRequest(BaseModel):
    force_full_refine: bool = False
