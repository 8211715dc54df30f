"""A headless Slicer for tests: the real MRML scene and module logics of the slicer-core wheel.

slicer-core carries Slicer's MRML, segmentation, markups and transform libraries and Slicer's own
``slicer/util.py``, but no Qt, no ``slicer.app`` and none of the Python packages that only the
application ships (``qt``, ``ctk``, ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``,
``slicer.i18n``). This file wires the real logics to a fresh scene the way the application does and
installs minimal stand-ins for those missing packages, so that a scripted module file and its Lib
import and run their Logic under pytest. The stand-ins are edges only: nothing in them computes.
"""

from __future__ import annotations

import sys
import types
import typing
import unittest
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "TSFMSegmentation"


class _QtDummy:
    """Any Qt/CTK class: constructible, callable, every attribute another dummy."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> _QtDummy:
        return _QtDummy()

    def __getattr__(self, name: str) -> _QtDummy:
        return _QtDummy()


def _dummy_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    def any_class(attribute: str) -> type:
        if attribute.startswith("__"):
            raise AttributeError(attribute)  # keep inspect/pickle from mistaking the stub for a real file
        return _QtDummy

    module.__getattr__ = any_class  # type: ignore[attr-defined]
    return module


# --- slicer.ScriptedLoadableModule stand-in -------------------------------------------------------


class ScriptedLoadableModule:
    def __init__(self, parent: object) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__

    def resourcePath(self, filename: str) -> str:
        return str(MODULE_DIR / "Resources" / filename)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent: object = None) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__.removesuffix("Widget")

    def resourcePath(self, filename: str) -> str:
        return str(MODULE_DIR / "Resources" / filename)


class ScriptedLoadableModuleLogic:
    """The parameter node is a singleton vtkMRMLScriptedModuleNode tagged with the module name."""

    def __init__(self, parent: object = None) -> None:
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):  # noqa: ANN201 - returns a vtkMRMLScriptedModuleNode
        import slicer

        scene = slicer.mrmlScene
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
            node = scene.GetNthNodeByClass(index, "vtkMRMLScriptedModuleNode")
            if node.GetModuleName() == self.moduleName:
                return node
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetModuleName(self.moduleName)
        node.SetName(scene.GenerateUniqueName(self.moduleName))
        node.SetSingletonTag(self.moduleName)
        scene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message: str, msec: int = 0) -> None:
        print(message)


# --- slicer.parameterNodeWrapper stand-in ---------------------------------------------------------


@dataclass(frozen=True)
class WithinRange:
    minimum: float
    maximum: float


@dataclass(frozen=True)
class Default:
    value: object


def _plain_type(annotation: object) -> object:
    if typing.get_origin(annotation) is typing.Annotated:
        return typing.get_args(annotation)[0]
    return annotation


def parameterNodeWrapper(cls: type) -> type:
    """Typed attributes stored on a vtkMRMLScriptedModuleNode: node references for MRML node types,
    string parameters for str/bool/int/float (the same storage the real wrapper uses)."""
    import slicer

    fields = {name: _plain_type(annotation) for name, annotation in typing.get_type_hints(
        cls, include_extras=True).items()}
    defaults = {name: getattr(cls, name) for name in fields if hasattr(cls, name)}

    def make_property(name: str, kind: type) -> property:
        if isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode):
            return property(lambda self: self.parameterNode.GetNodeReference(name),
                            lambda self, node: self.parameterNode.SetNodeReferenceID(
                                name, node.GetID() if node else None))

        def getter(self):  # noqa: ANN001, ANN202
            if not self.parameterNode.GetParameter(name):
                return defaults.get(name, kind())
            text = self.parameterNode.GetParameter(name)
            return text == "True" if kind is bool else kind(text)

        def setter(self, value: object) -> None:  # noqa: ANN001
            self.parameterNode.SetParameter(name, str(value))

        return property(getter, setter)

    namespace = {name: make_property(name, kind) for name, kind in fields.items()}

    def __init__(self, parameterNode) -> None:  # noqa: ANN001, N807
        self.parameterNode = parameterNode
        for name, value in defaults.items():
            if not parameterNode.GetParameter(name) and not isinstance(value, property):
                setattr(self, name, value)

    namespace["__init__"] = __init__
    namespace["connectGui"] = lambda self, gui: object()
    namespace["disconnectGui"] = lambda self, tag: None
    namespace["AddObserver"] = lambda self, *args: self.parameterNode.AddObserver(*args)
    namespace["RemoveObserver"] = lambda self, *args: self.parameterNode.RemoveObserver(*args)
    namespace["StartModify"] = lambda self: self.parameterNode.StartModify()
    namespace["EndModify"] = lambda self, was: self.parameterNode.EndModify(was)
    return type(cls.__name__, (), namespace)


# --- installation ---------------------------------------------------------------------------------


def install_stand_ins() -> None:
    """Put the missing application packages into sys.modules (idempotent) and the module on sys.path."""
    import slicer
    import slicer.util

    for name in ("qt", "ctk", "PythonQt"):
        sys.modules.setdefault(name, _dummy_module(name))
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for item in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                 ScriptedLoadableModuleTest):
        setattr(slm, item.__name__, item)
    slm.__all__ = [item.__name__ for item in (ScriptedLoadableModule, ScriptedLoadableModuleWidget,
                                              ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest)]
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = parameterNodeWrapper
    wrapper.WithinRange = WithinRange
    wrapper.Default = Default
    wrapper.__all__ = ["parameterNodeWrapper", "WithinRange", "Default"]
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    for module in (slm, wrapper, i18n):
        sys.modules.setdefault(module.__name__, module)
        setattr(slicer, module.__name__.split(".")[-1], sys.modules[module.__name__])
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))


@dataclass
class MiniSlicer:
    """One fresh scene with the application logic and the module logics the module uses."""

    scene: object
    application_logic: object
    volumes: object
    segmentations: object
    markups: object


def start() -> MiniSlicer:
    """Create a scene wired like Slicer's application and make it ``slicer.mrmlScene``."""
    import slicer

    install_stand_ins()
    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.GetColorLogic().SetMRMLScene(scene)
    app.GetColorLogic().AddDefaultColorNodes()

    def module_logic(cls: type, name: str) -> object:
        logic = cls()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(name, logic)
        return logic

    volumes = module_logic(slicer.vtkSlicerVolumesLogic, "Volumes")
    segmentations = module_logic(slicer.vtkSlicerSegmentationsModuleLogic, "Segmentations")
    markups = module_logic(slicer.vtkSlicerMarkupsLogic, "Markups")
    module_logic(slicer.vtkSlicerSubjectHierarchyModuleLogic, "SubjectHierarchy")
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        volumes=types.SimpleNamespace(logic=lambda: volumes),
        segmentations=types.SimpleNamespace(logic=lambda: segmentations),
        markups=types.SimpleNamespace(logic=lambda: markups),
    )
    return MiniSlicer(scene, app, volumes, segmentations, markups)


def load_volume(path: Path, name: str = "CT"):  # noqa: ANN201 - vtkMRMLScalarVolumeNode
    """Read a NIfTI/NRRD file into a scalar volume node through Slicer's own storage node."""
    import slicer

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    slicer.mrmlScene.AddNode(storage)
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise OSError(f"could not read {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


# --- scenes for geometry tests ----------------------------------------------------------------------


def rotation(axis: str, degrees: float) -> np.ndarray:
    """4x4 rotation about the R (x), A (y) or S (z) axis."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[axis]
    m = np.eye(4)
    m[a, a], m[a, b], m[b, a], m[b, b] = c, -s, s, c
    return m


def make_oblique(volume_node, degrees: float = 25.0) -> None:  # noqa: ANN001
    """Rotate the volume's own axes (an oblique acquisition), keeping its voxels."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    current = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    volume_node.SetIJKToRASMatrix(_vtk_matrix(rotation("x", degrees) @ rotation("z", 10.0) @ current))


def add_parent_transform(volume_node, matrix: np.ndarray):  # noqa: ANN001, ANN201
    import slicer

    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    transform.SetMatrixTransformToParent(_vtk_matrix(matrix))
    volume_node.SetAndObserveTransformNodeID(transform.GetID())
    return transform


def _vtk_matrix(array: np.ndarray):  # noqa: ANN202 - vtkMatrix4x4
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            matrix.SetElement(row, col, float(array[row, col]))
    return matrix
