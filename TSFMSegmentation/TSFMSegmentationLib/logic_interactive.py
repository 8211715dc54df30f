"""Interactive segmentation: each click or box goes to a server session, the answer lands in a segment.

One ``InteractiveEditor`` works on one volume and one segmentation. Each segment it edits is one
object of the server session. Every answer (origin + mask crop of the changed region) is written
into the current segment in place (``segments.apply_crop``), honouring the Segment Editor's masking
and overwrite settings at that moment. Undo/redo keep bbox-sized snapshots per segment (exact, even
after overwrite and masking).

The segment, not the server, is the truth: before each prompt the segment's voxel checksum is compared
with the one after the last model write, and when they differ (undo, redo, reset, a Segment Editor
touch-up) the server's object is re-seeded from the segment's current voxels. When the server lets
the session expire (410) or forgets it (404 after a restart), a new session is opened the same way
and the prompt is sent again.

The segment edited is the one the user picks (``edit_segment``): one made by the automatic model or
loaded from a file is refined from its own voxels, since its first prompt re-seeds the server with them.

Markups are watched once per node (watching again replaces the observers). A watched ROI is sent when
its placement ends and when a drag of a handle or of its centre ends; while Slicer is still placing it
(size 0 after the first of the two clicks) it is skipped without a word.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import slicer

from . import prompts, provenance
from .client import BackendClient, NotFound, SessionExpired
from .segments import (
    CropChange,
    EditSettings,
    add_empty_segment,
    apply_crop,
    attach_to_volume,
    read_segment_crop,
    redo_change,
    segment_ids,
    undo_change,
)
from .volumes import dicom_modality, image_geometry, image_payload

# DICOM Modality values the backend takes (it normalises MR and PET by percentiles, CT by HU).
MODALITIES = ("CT", "MR", "PT")


class OtherSegmentation(ValueError):
    """The segment to edit lives in another segmentation node than the editor's: start a new editor on it."""


class InteractiveEditor:
    """Clicks and boxes on ``volume_node`` refined by the promptable ``model``.

    Args:
        client: connection to the backend.
        volume_node: the image; clicks are mapped into its voxels with its full world geometry.
        model: id of a promptable model on the server.
        segmentation_node: where results go (a new one on the volume's grid when None).
        settings: returns the Segment Editor settings to honour at each write.
        backend: recorded in the provenance (e.g. the server URL).
    """

    def __init__(self, client: BackendClient, volume_node: slicer.vtkMRMLScalarVolumeNode, model: str,
                 segmentation_node: slicer.vtkMRMLSegmentationNode | None = None,
                 settings: Callable[[], EditSettings] = EditSettings, backend: str = "") -> None:
        self.client = client
        self.volume_node = volume_node
        self.model = model
        self.settings = settings
        self.backend = backend
        self.geometry = image_geometry(volume_node)
        if segmentation_node is None:
            segmentation_node = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{volume_node.GetName()} interactive")
            segmentation_node.CreateDefaultDisplayNodes()
        attach_to_volume(segmentation_node, volume_node)
        self.segmentation_node = segmentation_node
        self.image_id = ""
        self.session_id = ""
        self.segment_id = ""
        self._objects: dict[str, int] = {}
        self._synced: dict[str, str] = {}
        self._watched: list[tuple[slicer.vtkMRMLMarkupsNode, list[int]]] = []
        self._last_box: dict[int, tuple[str, dict[str, Any], str]] = {}
        self._first_corner: dict[int, np.ndarray] = {}  # ROI -> its first click while it is being placed
        self._empty_checksum = provenance.mask_checksum(np.zeros((1, 1, 1), np.uint8))
        self._undo: dict[str, list[CropChange]] = {}
        self._redo: dict[str, list[CropChange]] = {}

    # ---- session ---------------------------------------------------------------------------------
    def start(self, segment_id: str | None = None) -> str:
        """Upload the image, open a session and pick (or create) the segment to edit; returns the session id."""
        payload = image_payload(self.volume_node)
        self.image_id = self.client.upload_image(payload.array, payload.spacing, payload.origin, payload.direction)
        self.session_id = self.client.create_session(self.image_id, self.model, self._modality())
        self.select_segment(segment_id or self.segment_id or self._new_segment_id())
        return self.session_id

    def _reopen(self) -> None:
        """A new session (image sent again if the server lost it, e.g. after a restart); each object
        is re-seeded from its segment before its next prompt."""
        payload = image_payload(self.volume_node)
        self.image_id = self.client.upload_image(payload.array, payload.spacing, payload.origin, payload.direction)
        self.session_id = self.client.create_session(self.image_id, self.model, self._modality())
        self._synced.clear()

    def _modality(self) -> str | None:
        """The volume's DICOM modality where the backend understands it (CT, MR, PT), else None: the
        backend then detects it from the image."""
        modality = dicom_modality(self.volume_node)
        return modality if modality in MODALITIES else None

    def _sync_object(self) -> None:
        """Send the current segment's voxels to the server when they differ from what it last produced."""
        checksum = provenance.voxel_checksum(self.segmentation_node, self.segment_id, self.volume_node)
        if self._synced.get(self.segment_id, self._empty_checksum) == checksum:
            return
        k, j, i = self.geometry.shape_kji
        mask = read_segment_crop(self.segmentation_node, self.segment_id, self.volume_node,
                                 (0, i - 1, 0, j - 1, 0, k - 1))
        self.client.interact(self.session_id, None, mask=mask, object_id=self.object_id)
        self._synced[self.segment_id] = checksum

    def heartbeat(self) -> float:
        """Keep the session alive while the user looks (the widget calls this from a timer)."""
        try:
            return self.client.heartbeat(self.session_id)
        except (SessionExpired, NotFound):
            self._reopen()
            return self.client.heartbeat(self.session_id)

    def close(self) -> None:
        for node, _tags in list(self._watched):
            self.unwatch(node)
        if self.session_id:
            try:
                self.client.close_session(self.session_id)
            except (NotFound, SessionExpired):
                pass
        self.session_id = ""

    # ---- segments --------------------------------------------------------------------------------
    def _new_segment_id(self) -> str:
        existing = set(segment_ids(self.segmentation_node))
        number = len(existing) + 1
        while f"segment {number}" in {self.segmentation_node.GetSegmentation().GetSegment(s).GetName()
                                       for s in existing}:
            number += 1
        return add_empty_segment(self.segmentation_node, f"segment {number}")

    def select_segment(self, segment_id: str) -> None:
        """Make ``segment_id`` the one clicks edit (each segment is its own object on the server).

        A segment that already holds voxels (an automatic result, a loaded label map, a manual drawing)
        is refined from them: the next prompt first seeds its server object with those voxels.
        """
        if self.segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
            raise KeyError(f"no segment '{segment_id}' in '{self.segmentation_node.GetName()}'")
        self.segment_id = segment_id
        if segment_id not in self._objects:
            self._objects[segment_id] = max(self._objects.values(), default=0) + 1

    def edit_segment(self, segment_id: str,
                     segmentation_node: slicer.vtkMRMLSegmentationNode | None = None) -> None:
        """Switch to an existing segment (e.g. the one selected in the Segment Editor) so that the next
        clicks correct it instead of starting from scratch.

        Raises ``OtherSegmentation`` when ``segmentation_node`` is not the editor's node (start a new
        editor on that node), ``KeyError`` when the segment does not exist.
        """
        if segmentation_node is not None and segmentation_node is not self.segmentation_node:
            raise OtherSegmentation(
                f"segment '{segment_id}' is in segmentation '{segmentation_node.GetName()}', not in "
                f"'{self.segmentation_node.GetName()}' that the interactive session edits: start the "
                "session again on that segmentation")
        self.select_segment(segment_id)

    def next_segment(self, name: str | None = None) -> str:
        """Start a new segment (the next clicks build it); returns its id."""
        segment_id = add_empty_segment(self.segmentation_node, name) if name else self._new_segment_id()
        self.select_segment(segment_id)
        return segment_id

    @property
    def object_id(self) -> int:
        return self._objects[self.segment_id]

    # ---- prompts ---------------------------------------------------------------------------------
    def click(self, ras: tuple[float, float, float], positive: bool = True) -> CropChange:
        """A click at world RAS mm (from any view): include (positive) or exclude (negative) that spot."""
        return self._send(prompts.point_interaction(self.geometry, ras, positive, self.object_id))

    def watch(self, point_list: slicer.vtkMRMLMarkupsFiducialNode,
              on_error: Callable[[Exception], None] | None = None) -> None:
        """Send every point placed in ``point_list`` from now on as one click (its role gives the polarity).

        Errors (a click outside the image, a server failure) go to ``on_error``; without one they are raised.
        Watching a list again replaces its observer (one click is never sent twice).
        """
        def placed(caller, event) -> None:  # noqa: ANN001
            index = caller.GetNumberOfControlPoints() - 1
            try:
                self.click(prompts.control_point_world(caller, index), prompts.is_positive(caller))
            except Exception as error:
                if on_error is None:
                    raise
                on_error(error)

        self._observe(point_list, {slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent: placed})

    def watch_box(self, roi_node: slicer.vtkMRMLMarkupsROINode,
                  on_error: Callable[[Exception], None] | None = None) -> None:
        """Send the box when its placement ends and when a drag of one of its handles ends.

        Slicer places an ROI with two clicks; after the first one the ROI has size 0 and is skipped
        silently, as is a box of zero size along two or three axes. A handle clicked without moving it
        sends nothing again. Other errors go to ``on_error`` (raised without one). Watching the same ROI
        again replaces its observers.
        """
        def changed(caller, placed: bool) -> None:  # noqa: ANN001
            try:
                if placed:
                    self._note_placement(caller)
                self._send_box_if_changed(caller)
            except prompts.BoxNotReady:
                pass
            except Exception as error:
                if on_error is None:
                    raise
                on_error(error)

        self._observe(roi_node, {
            slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent: lambda caller, event: changed(caller, True),
            slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent: lambda caller, event: changed(caller, False)})

    def _note_placement(self, roi_node: slicer.vtkMRMLMarkupsROINode) -> None:
        """Remember the first click of a placement; at the second, flatten a box drawn on one slice."""
        defined = roi_node.GetNumberOfDefinedControlPoints()
        if defined < roi_node.GetRequiredNumberOfControlPoints():
            if defined == 1:
                self._first_corner[id(roi_node)] = np.array(roi_node.GetNthControlPointPosition(0), float)
            return
        first = self._first_corner.pop(id(roi_node), None)
        if first is not None:
            prompts.flatten_if_drawn_on_one_slice(roi_node, first)

    def unwatch(self, node: slicer.vtkMRMLMarkupsNode) -> None:
        """Stop sending what is placed in ``node`` (a point list or an ROI)."""
        for watched, tags in list(self._watched):
            if watched is node:
                for tag in tags:
                    watched.RemoveObserver(tag)
                self._watched.remove((watched, tags))
        self._last_box.pop(id(node), None)
        self._first_corner.pop(id(node), None)

    def _observe(self, node: slicer.vtkMRMLMarkupsNode, callbacks: dict[int, Callable]) -> None:
        self.unwatch(node)
        self._watched.append((node, [node.AddObserver(event, callback) for event, callback in callbacks.items()]))

    def _send_box_if_changed(self, roi_node: slicer.vtkMRMLMarkupsROINode) -> CropChange | None:
        """Send the ROI unless it is the box last sent from it and the segment has not changed since."""
        interaction = prompts.box_interaction(self.geometry, roi_node, self.object_id)
        last = self._last_box.get(id(roi_node))
        if last is not None and last[0] == self.segment_id and last[1] == interaction and last[2] and \
                last[2] == provenance.voxel_checksum(self.segmentation_node, self.segment_id, self.volume_node):
            return None
        change = self._send(interaction)
        self._last_box[id(roi_node)] = (self.segment_id, dict(interaction, object_id=self.object_id),
                                        self._synced.get(self.segment_id, ""))
        return change

    def box(self, roi_node: slicer.vtkMRMLMarkupsROINode) -> CropChange:
        """The object lies inside this ROI box."""
        return self._send(prompts.box_interaction(self.geometry, roi_node, self.object_id))

    def _send(self, interaction: dict[str, Any]) -> CropChange:
        if not self.session_id:
            raise RuntimeError("start the interactive session first")
        if self.segmentation_node.GetSegmentation().GetSegment(self.segment_id) is None:
            # The user removed the segment being edited: the prompt starts a new one, as a fresh object.
            self.next_segment()
            interaction = dict(interaction, object_id=self.object_id)
        try:
            self._sync_object()
            origin, mask = self.client.interact(self.session_id, interaction)
        except (SessionExpired, NotFound):
            self._reopen()
            self._sync_object()
            origin, mask = self.client.interact(self.session_id, interaction)
        change = apply_crop(self.segmentation_node, self.segment_id, self.volume_node, tuple(origin), mask,
                            self.settings())
        self._undo.setdefault(self.segment_id, []).append(change)
        self._redo[self.segment_id] = []
        record = provenance.record_model_output(self.segmentation_node, self.segment_id, self.volume_node,
                                                self.model, "interactive", [interaction], backend=self.backend)
        # What the server holds is its own mask, which masking may have trimmed on the way in.
        self._synced[self.segment_id] = (record["checksum"] if np.array_equal(change.after[self.segment_id] > 0,
                                         mask[_crop_slices(change, origin)] > 0) else "")
        return change

    # ---- history ---------------------------------------------------------------------------------
    def can_undo(self) -> bool:
        return bool(self._undo.get(self.segment_id))

    def can_redo(self) -> bool:
        return bool(self._redo.get(self.segment_id))

    def undo(self) -> bool:
        """Put the current segment (and any segment it overwrote) back as before the last prompt."""
        if not self.can_undo():
            return False
        change = self._undo[self.segment_id].pop()
        undo_change(self.segmentation_node, self.volume_node, change)
        self._redo.setdefault(self.segment_id, []).append(change)
        return True

    def redo(self) -> bool:
        if not self.can_redo():
            return False
        change = self._redo[self.segment_id].pop()
        redo_change(self.segmentation_node, self.volume_node, change)
        self._undo[self.segment_id].append(change)
        return True

    def reset(self) -> CropChange:
        """Empty the current segment and forget its prompts on the server (undoable)."""
        k, j, i = self.geometry.shape_kji
        change = apply_crop(self.segmentation_node, self.segment_id, self.volume_node, (0, 0, 0),
                            np.zeros((k, j, i), np.uint8))
        self._undo.setdefault(self.segment_id, []).append(change)
        self._redo[self.segment_id] = []
        try:
            self.client.reset_session(self.session_id, self.object_id)
        except (SessionExpired, NotFound):
            self._reopen()
        self._synced.pop(self.segment_id, None)
        return change


def _crop_slices(change: CropChange, origin: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """Where the (clipped) extent of ``change`` lies inside the server's crop at ``origin``."""
    i0, i1, j0, j1, k0, k1 = change.extent
    return (slice(k0 - origin[0], k1 - origin[0] + 1), slice(j0 - origin[1], j1 - origin[1] + 1),
            slice(i0 - origin[2], i1 - origin[2] + 1))
