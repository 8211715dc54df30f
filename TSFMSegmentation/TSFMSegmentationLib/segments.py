"""Segmentation nodes on the exact grid of the input volume: whole label maps and in-place crops.

A result label map (K, J, I) becomes one segment per label present, named, coloured and coded from
``terminology``. An interactive answer is a crop (origin (k, j, i) + uint8 mask) written into one
segment only inside the crop's extent, honouring the Segment Editor's settings: where editing is
allowed (mask mode, intensity range) and which other segments the new voxels overwrite. Every write
returns a ``CropChange`` holding the before/after crops of all segments it touched, which is what
the undo stack keeps: bbox-sized snapshots rather than whole label maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import slicer
import vtk

from . import terminology
from .volumes import (
    image_geometry,
    labelmap_node_on_volume_grid,
    node_to_world,
    numpy_to_vtk_matrix,
    vtk_matrix_to_numpy,
)

Extent = tuple[int, int, int, int, int, int]  # i0, i1, j0, j1, k0, k1 inclusive (VTK order)
GRID_TOLERANCE_MM = 1e-4


def labels_to_segmentation(
    labels: np.ndarray,
    names: dict[int, str],
    volume_node: slicer.vtkMRMLScalarVolumeNode,
    segmentation_node: slicer.vtkMRMLSegmentationNode | None = None,
) -> tuple[slicer.vtkMRMLSegmentationNode, dict[int, str]]:
    """Add one segment per label present in ``labels`` (K, J, I) to a segmentation on the volume's grid.

    Returns the segmentation node and {label: segment id}. The segmentation takes the volume's parent
    transform and reference geometry, so the segments cover exactly the volume's voxels.
    """
    if segmentation_node is None:
        segmentation_node = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", f"{volume_node.GetName()} segmentation")
        segmentation_node.CreateDefaultDisplayNodes()
    attach_to_volume(segmentation_node, volume_node)
    labelmap = labelmap_node_on_volume_grid(volume_node, labels, "tsfm-import")
    before = set(segment_ids(segmentation_node))
    try:
        logic = slicer.modules.segmentations.logic()
        if not logic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node):
            raise RuntimeError("Slicer could not import the label map into the segmentation")
    finally:
        display = labelmap.GetDisplayNode()
        slicer.mrmlScene.RemoveNode(labelmap)
        if display is not None:
            slicer.mrmlScene.RemoveNode(display)
    segmentation = segmentation_node.GetSegmentation()
    created: dict[int, str] = {}
    for segment_id in segment_ids(segmentation_node):
        if segment_id in before:
            continue
        segment = segmentation.GetSegment(segment_id)
        label = int(segment.GetLabelValue())
        created[label] = segment_id
        describe_segment(segment, names.get(label, f"label {label}"))
    return segmentation_node, created


def attach_to_volume(segmentation_node: slicer.vtkMRMLSegmentationNode,
                     volume_node: slicer.vtkMRMLScalarVolumeNode) -> None:
    """Put the segmentation under the volume's transform and on the volume's voxel grid.

    A segmentation that already holds segments keeps its transform: moving it would move them. It
    must then already share the volume's transform.
    """
    if segmentation_node.GetTransformNodeID() != volume_node.GetTransformNodeID():
        if segment_ids(segmentation_node):
            raise ValueError(
                f"segmentation '{segmentation_node.GetName()}' is under another transform than volume "
                f"'{volume_node.GetName()}'; put both under the same transform or choose a new segmentation")
        segmentation_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)


def describe_segment(segment: slicer.vtkSegment, name: str) -> None:
    """Name, colour and standard terminology (where the name is known) of a segment."""
    entry = terminology.lookup(name)
    segment.SetName(entry.display_name if entry else name)
    if entry is not None:
        segment.SetColor(*(channel / 255.0 for channel in entry.rgb))
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry.serialized())


def segment_ids(segmentation_node: slicer.vtkMRMLSegmentationNode) -> list[str]:
    ids = vtk.vtkStringArray()
    segmentation_node.GetSegmentation().GetSegmentIDs(ids)
    return [ids.GetValue(index) for index in range(ids.GetNumberOfValues())]


def add_empty_segment(segmentation_node: slicer.vtkMRMLSegmentationNode, name: str) -> str:
    """A new empty segment with a colour from the standard table when the name is known."""
    segment_id = segmentation_node.GetSegmentation().AddEmptySegment("", name)
    describe_segment(segmentation_node.GetSegmentation().GetSegment(segment_id), name)
    return segment_id


# --- crops on the volume grid ---------------------------------------------------------------------


def crop_extent(origin_kji: tuple[int, int, int], shape_kji: tuple[int, ...]) -> Extent:
    k, j, i = origin_kji
    return (i, i + shape_kji[2] - 1, j, j + shape_kji[1] - 1, k, k + shape_kji[0] - 1)


def extent_shape(extent: Extent) -> tuple[int, int, int]:
    """(K, J, I) array shape of an inclusive VTK extent."""
    return (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)


def grid_image(segmentation_node, volume_node, extent: Extent, array=None):  # noqa: ANN001, ANN202
    """A vtkOrientedImageData on the volume's voxel grid, in the segmentation node's coordinates."""
    ijk_to_world = image_geometry(volume_node).ijk_to_world
    ijk_to_segmentation = np.linalg.inv(node_to_world(segmentation_node)) @ ijk_to_world
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(numpy_to_vtk_matrix(ijk_to_segmentation))
    image.SetExtent(*extent)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    view = _image_array(image)
    view[:] = 0 if array is None else array
    return image


def _image_array(image) -> np.ndarray:  # noqa: ANN001
    """Writable (K, J, I) numpy view of a single-component vtkImageData."""
    from vtk.util import numpy_support

    i0, i1, j0, j1, k0, k1 = image.GetExtent()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return flat.reshape(k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)


def read_segment_crop(segmentation_node, segment_id: str, volume_node, extent: Extent) -> np.ndarray:  # noqa: ANN001
    """uint8 {0, 1} (K, J, I) of one segment over ``extent`` of the volume's grid."""
    internal = _internal_labelmap_on_grid(segmentation_node, segment_id, volume_node)
    if internal is not None:
        # The usual case (segments on the volume's grid): read the crop straight from the layer, at a
        # cost that grows with the crop, not with the volume or the number of segments.
        label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
        return _values_over_extent(internal, extent, label)
    reference = grid_image(segmentation_node, volume_node, extent)
    labelmap = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    if labelmap.IsEmpty():
        return _values_over_extent(labelmap, extent)
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, reference, resampled, False, True)
    return _values_over_extent(resampled, extent)


def _internal_labelmap_on_grid(segmentation_node, segment_id: str, volume_node):  # noqa: ANN001, ANN202
    """The segment's labelmap layer when its voxels coincide with the volume's voxels, else None."""
    internal = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    if internal is None or internal.GetPointData().GetScalars() is None:
        return None
    if internal.GetNumberOfScalarComponents() != 1:
        return None
    to_segmentation = vtk.vtkMatrix4x4()
    internal.GetImageToWorldMatrix(to_segmentation)
    grid = np.linalg.inv(node_to_world(segmentation_node)) @ image_geometry(volume_node).ijk_to_world
    if not np.allclose(vtk_matrix_to_numpy(to_segmentation), grid, atol=GRID_TOLERANCE_MM):
        return None
    return internal


def _values_over_extent(image, extent: Extent, label: int | None = None) -> np.ndarray:  # noqa: ANN001
    """uint8 {0, 1} (K, J, I) of an image on the reference grid, over ``extent`` (zero where it ends).

    A voxel is 1 where the image is nonzero, or equals ``label`` when one is given (shared layers).
    """
    wanted = np.zeros(extent_shape(extent), np.uint8)
    have = image.GetExtent()
    low = [max(extent[2 * a], have[2 * a]) for a in range(3)]
    high = [min(extent[2 * a + 1], have[2 * a + 1]) for a in range(3)]
    if image.GetPointData().GetScalars() is None or any(high[a] < low[a] for a in range(3)):
        return wanted
    source = _image_array(image)[
        low[2] - have[4]:high[2] - have[4] + 1, low[1] - have[2]:high[1] - have[2] + 1,
        low[0] - have[0]:high[0] - have[0] + 1]
    wanted[low[2] - extent[4]:high[2] - extent[4] + 1, low[1] - extent[2]:high[1] - extent[2] + 1,
           low[0] - extent[0]:high[0] - extent[0] + 1] = (source > 0) if label is None else (source == label)
    return wanted


def write_segment_crop(segmentation_node, segment_id: str, volume_node, extent: Extent,  # noqa: ANN001
                       mask: np.ndarray) -> None:
    """Replace one segment's voxels inside ``extent`` (and only there) by ``mask`` (K, J, I)."""
    if _write_in_layer(segmentation_node, segment_id, volume_node, extent, mask):
        return
    segmentation = segmentation_node.GetSegmentation()
    if len(segmentation.GetSegmentIDsForLayer(segmentation.GetLayerIndex(segment_id))) > 1:
        # A layer of its own, so that new voxels never take another segment's voxels in a shared layer
        # (whether they may is the overwrite mode's decision, made before this write).
        segmentation.SeparateSegmentLabelmap(segment_id)
    # A plain replace works for every layer layout; it covers the segment's whole occupied region plus
    # the crop and carries the segment's own voxels outside the crop unchanged.
    region = _union(extent, occupied_extent(segmentation_node, segment_id, volume_node))
    values = read_segment_crop(segmentation_node, segment_id, volume_node, region)
    values[extent[4] - region[4]:extent[5] - region[4] + 1, extent[2] - region[2]:extent[3] - region[2] + 1,
           extent[0] - region[0]:extent[1] - region[0] + 1] = mask > 0
    image = grid_image(segmentation_node, volume_node, region, values)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, logic.MODE_REPLACE):
        raise RuntimeError(f"Slicer could not write segment '{segment_id}'")


def _write_in_layer(segmentation_node, segment_id: str, volume_node, extent: Extent,  # noqa: ANN001
                    mask: np.ndarray) -> bool:
    """Write the crop straight into the segment's labelmap layer when that is safe; False otherwise.

    Safe means: the layer lies on the volume grid and covers the crop, and the write either only
    removes this segment's voxels or the segment has the layer to itself.
    """
    internal = _internal_labelmap_on_grid(segmentation_node, segment_id, volume_node)
    if internal is None:
        return False
    have = internal.GetExtent()
    if any(extent[2 * a] < have[2 * a] or extent[2 * a + 1] > have[2 * a + 1] for a in range(3)):
        return False
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id)
    label = segment.GetLabelValue()
    region = _image_array(internal)[
        extent[4] - have[4]:extent[5] - have[4] + 1, extent[2] - have[2]:extent[3] - have[2] + 1,
        extent[0] - have[0]:extent[1] - have[0] + 1]
    adds = (mask > 0) & (region != label)
    shared = len(segmentation.GetSegmentIDsForLayer(segmentation.GetLayerIndex(segment_id))) > 1
    if adds.any() and shared:
        return False
    region[(mask == 0) & (region == label)] = 0
    region[adds] = label
    internal.Modified()
    segment.Modified()
    return True


def occupied_extent(segmentation_node, segment_id: str, volume_node) -> Extent | None:  # noqa: ANN001
    """A volume-grid extent that holds all of a segment's voxels (None when its labelmap is empty)."""
    internal = _internal_labelmap_on_grid(segmentation_node, segment_id, volume_node)
    if internal is not None:
        return _clip_extent(internal.GetExtent(), image_geometry(volume_node).shape_kji)
    labelmap = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    if labelmap.IsEmpty():
        return None
    i0, i1, j0, j1, k0, k1 = labelmap.GetExtent()
    corners = np.array([[i, j, k, 1.0] for i in (i0, i1) for j in (j0, j1) for k in (k0, k1)])
    to_world = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(to_world)
    labelmap_to_segmentation = np.array([[to_world.GetElement(r, c) for c in range(4)] for r in range(4)])
    grid_to_segmentation = np.linalg.inv(node_to_world(segmentation_node)) @ image_geometry(volume_node).ijk_to_world
    ijk = (np.linalg.inv(grid_to_segmentation) @ labelmap_to_segmentation @ corners.T).T[:, :3]
    shape_ijk = image_geometry(volume_node).shape_kji[::-1]
    low = np.clip(np.floor(ijk.min(axis=0) - 1), 0, np.array(shape_ijk) - 1).astype(int)
    high = np.clip(np.ceil(ijk.max(axis=0) + 1), 0, np.array(shape_ijk) - 1).astype(int)
    return (low[0], high[0], low[1], high[1], low[2], high[2])


def _clip_extent(extent: tuple[int, ...], shape_kji: tuple[int, int, int]) -> Extent | None:
    sizes = (shape_kji[2], shape_kji[1], shape_kji[0])
    clipped = tuple(max(extent[n], 0) if n % 2 == 0 else min(extent[n], sizes[n // 2] - 1) for n in range(6))
    return None if any(clipped[2 * a + 1] < clipped[2 * a] for a in range(3)) else clipped


def _union(a: Extent, b: Extent | None) -> Extent:
    if b is None:
        return a
    return tuple(min(a[n], b[n]) if n % 2 == 0 else max(a[n], b[n]) for n in range(6))


# --- Segment Editor settings ----------------------------------------------------------------------


@dataclass(frozen=True)
class EditSettings:
    """The Segment Editor's masking and overwrite settings that an interactive write honours.

    mask_mode: a ``vtkMRMLSegmentationNode.EditAllowed*`` value; mask_segment_id for InsideSingleSegment;
    intensity_range: (low, high) of the source volume where editing is allowed, or None;
    overwrite_mode: a ``vtkMRMLSegmentEditorNode.Overwrite*`` value.

    Without a Segment Editor node a write leaves the other segments alone (``OverwriteNone``): a click
    must never eat into what is already segmented. A node's own settings, whatever they are, win.
    """

    mask_mode: int = slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere
    mask_segment_id: str = ""
    intensity_range: tuple[float, float] | None = None
    overwrite_mode: int = slicer.vtkMRMLSegmentEditorNode.OverwriteNone

    @classmethod
    def from_editor_node(cls, node: slicer.vtkMRMLSegmentEditorNode | None) -> EditSettings:
        """The settings ``node`` holds now (what its Segment Editor shows); the defaults without one."""
        if node is None:
            return cls()
        intensity = None
        if node.GetSourceVolumeIntensityMask():
            intensity = tuple(node.GetSourceVolumeIntensityMaskRange())
        return cls(node.GetMaskMode(), node.GetMaskSegmentID() or "", intensity, node.GetOverwriteMode())


def _visible_ids(segmentation_node) -> set[str]:  # noqa: ANN001
    display = segmentation_node.GetDisplayNode()
    ids = segment_ids(segmentation_node)
    return {sid for sid in ids if display is None or display.GetSegmentVisibility(sid)}


def allowed_region(settings: EditSettings, segmentation_node, segment_id: str, volume_node,  # noqa: ANN001
                   extent: Extent) -> np.ndarray:
    """bool (K, J, I): where the current segment may change inside ``extent``."""
    node = slicer.vtkMRMLSegmentationNode
    others = [sid for sid in segment_ids(segmentation_node) if sid != segment_id]
    visible = _visible_ids(segmentation_node)
    shape = extent_shape(extent)
    allowed = np.ones(shape, bool)

    def union(ids: list[str]) -> np.ndarray:
        region = np.zeros(shape, bool)
        for sid in ids:
            region |= read_segment_crop(segmentation_node, sid, volume_node, extent) > 0
        return region

    mode = settings.mask_mode
    if mode == node.EditAllowedInsideAllSegments:
        allowed = union(others)
    elif mode == node.EditAllowedInsideVisibleSegments:
        allowed = union([sid for sid in others if sid in visible])
    elif mode == node.EditAllowedOutsideAllSegments:
        allowed = ~union(others)
    elif mode == node.EditAllowedOutsideVisibleSegments:
        allowed = ~union([sid for sid in others if sid in visible])
    elif mode == node.EditAllowedInsideSingleSegment and settings.mask_segment_id:
        allowed = union([settings.mask_segment_id])
    if settings.intensity_range is not None:
        k0, j0, i0 = extent[4], extent[2], extent[0]
        voxels = slicer.util.arrayFromVolume(volume_node)[
            k0:k0 + shape[0], j0:j0 + shape[1], i0:i0 + shape[2]]
        low, high = settings.intensity_range
        allowed &= (voxels >= low) & (voxels <= high)
    return allowed


def overwritten_segments(settings: EditSettings, segmentation_node, segment_id: str) -> list[str]:  # noqa: ANN001
    """The other segments whose voxels the current segment takes over."""
    editor = slicer.vtkMRMLSegmentEditorNode
    others = [sid for sid in segment_ids(segmentation_node) if sid != segment_id]
    if settings.overwrite_mode == editor.OverwriteAllSegments:
        return others
    if settings.overwrite_mode == editor.OverwriteVisibleSegments:
        visible = _visible_ids(segmentation_node)
        return [sid for sid in others if sid in visible]
    return []


# --- in-place writes with undo records -------------------------------------------------------------


@dataclass
class CropChange:
    """Before/after crops of every segment one write touched, all over the same extent.

    segment_id is the segment that was edited; the other keys are segments it overwrote.
    """

    segment_id: str
    extent: Extent
    before: dict[str, np.ndarray] = field(default_factory=dict)
    after: dict[str, np.ndarray] = field(default_factory=dict)


def apply_crop(
    segmentation_node: slicer.vtkMRMLSegmentationNode,
    segment_id: str,
    volume_node: slicer.vtkMRMLScalarVolumeNode,
    origin_kji: tuple[int, int, int],
    mask: np.ndarray,
    settings: EditSettings = EditSettings(),
) -> CropChange:
    """Write a model's mask crop (origin (k, j, i) on the volume grid) into one segment in place.

    Outside the allowed region the segment keeps its voxels; the other segments chosen by the
    overwrite mode lose the voxels the segment now holds. The crop is clipped to the volume.
    """
    mask, origin_kji = _clip_to_volume(mask, origin_kji, image_geometry(volume_node).shape_kji)
    extent = crop_extent(origin_kji, mask.shape)
    change = CropChange(segment_id, extent)
    current = read_segment_crop(segmentation_node, segment_id, volume_node, extent)
    allowed = allowed_region(settings, segmentation_node, segment_id, volume_node, extent)
    new = np.where(allowed, mask > 0, current > 0).astype(np.uint8)
    for other in overwritten_segments(settings, segmentation_node, segment_id):
        old = read_segment_crop(segmentation_node, other, volume_node, extent)
        if np.any(old & new):
            change.before[other] = old
            change.after[other] = (old & (1 - new)).astype(np.uint8)
    change.before[segment_id] = current
    change.after[segment_id] = new
    redo_change(segmentation_node, volume_node, change)
    return change


def undo_change(segmentation_node, volume_node, change: CropChange) -> None:  # noqa: ANN001
    """Put back every touched segment as it was before the change."""
    # The edited segment gives its voxels back first, so a shared labelmap layer never holds two
    # claims on one voxel while the overwritten segments take theirs back.
    _write_in_order(segmentation_node, volume_node, change, change.before, edited_first=True)


def redo_change(segmentation_node, volume_node, change: CropChange) -> None:  # noqa: ANN001
    """Write the state after the change (also how a change is first applied)."""
    _write_in_order(segmentation_node, volume_node, change, change.after, edited_first=False)


def _write_in_order(segmentation_node, volume_node, change: CropChange,  # noqa: ANN001
                    crops: dict[str, np.ndarray], edited_first: bool) -> None:
    others = [sid for sid in crops if sid != change.segment_id]
    order = [change.segment_id, *others] if edited_first else [*others, change.segment_id]
    for segment_id in order:
        if segmentation_node.GetSegmentation().GetSegment(segment_id) is not None:
            write_segment_crop(segmentation_node, segment_id, volume_node, change.extent, crops[segment_id])


def _clip_to_volume(mask: np.ndarray, origin_kji: tuple[int, int, int],
                    shape_kji: tuple[int, int, int]) -> tuple[np.ndarray, tuple[int, int, int]]:
    start = np.maximum(np.asarray(origin_kji), 0)
    stop = np.minimum(np.asarray(origin_kji) + np.asarray(mask.shape), np.asarray(shape_kji))
    if np.any(stop <= start):
        raise ValueError(f"mask crop at {tuple(origin_kji)} with shape {mask.shape} lies outside the volume "
                         f"{shape_kji} (K, J, I)")
    offset = start - np.asarray(origin_kji)
    clipped = mask[tuple(slice(int(offset[a]), int(offset[a] + stop[a] - start[a])) for a in range(3))]
    return np.ascontiguousarray(clipped), (int(start[0]), int(start[1]), int(start[2]))
