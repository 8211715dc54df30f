"""TSFMSegmentation: automatic and interactive 3D segmentation with foundation models, in 3D Slicer.

Five parts in the usual order: module metadata, typed parameter node, Widget (a thin view of the
parameter node and the Logic), Logic (every action, scriptable from the Python console without the
GUI) and the self-test. The work itself lives in ``TSFMSegmentationLib`` (Qt-free, tested on real
MRML); the backend runs out of process and is reached over HTTP ``/v1`` only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import slicer
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from TSFMSegmentationLib import export, provenance, terminology
from TSFMSegmentationLib.backend_process import (
    MIN_PYTHON,
    bundled_backend_dirs,
    is_same_interpreter,
    probe_backend,
)
from TSFMSegmentationLib.install_plan import (
    TORCH_REQUIREMENT,
    installed_torch_version,
    pip_arguments,
    torch_problem,
)
from TSFMSegmentationLib.logic_connection import Connection, describe_info
from TSFMSegmentationLib.logic_downloads import (
    ModelDownload,
    entry_label,
    needs_license_acceptance,
    offered_models,
)
from TSFMSegmentationLib.logic_interactive import InteractiveEditor, OtherSegmentation
from TSFMSegmentationLib.logic_jobs import AutomaticJob, JobStatus
from TSFMSegmentationLib.model_choices import AUTOMATIC, INTERACTIVE, model_choices
from TSFMSegmentationLib.prompts import BoxNotReady, create_prompt_list
from TSFMSegmentationLib.segments import EditSettings
from TSFMSegmentationLib.selftest import (
    MIN_BOX_DICE,
    MIN_CLICK_DICE,
    PHANTOM_SPACING_KJI,
    add_phantom,
    current_segment_mask,
    deepest_voxel,
    dice,
    lesion_box_world,
    one_click_dice,
    place_box,
)
from TSFMSegmentationLib.shortcuts import SHORTCUTS
from TSFMSegmentationLib.volumes import image_geometry

MODULE_DIR = Path(__file__).resolve().parent

CITATIONS = """
<p>Models and methods:</p><ul>
<li>STU-Net: Huang Z. et al. <i>STU-Net: Scalable and Transferable Medical Image Segmentation Models Empowered
by Large-Scale Supervised Pre-training</i>, arXiv:2304.06716, 2023.</li>
<li>TSFM: Xie Y. et al. <i>Tumor segmentation foundation model</i>, arXiv:2403.06396, 2024.</li>
<li>MIS-FM: Wang G. et al. <i>MIS-FM: 3D Medical Image Segmentation using Foundation Models Pretrained on a
Large-Scale Unannotated Dataset</i>, arXiv:2306.16925, 2023.</li>
<li>SuPreM / AbdomenAtlas: Li W. et al. <i>How Well Do Supervised 3D Models Transfer to Medical Imaging
Tasks?</i>, ICLR 2024.</li>
<li>3DSAM-adapter: Gong S. et al. <i>3DSAM-adapter: Holistic adaptation of SAM from 2D to 3D for promptable
tumor segmentation</i>, Medical Image Analysis 2024, doi:10.1016/j.media.2024.103324 (arXiv:2306.13465).</li>
<li>nnU-Net: Isensee F. et al. <i>nnU-Net</i>, Nature Methods 18, 203-211, 2021.</li>
</ul><p>Data used to build and test the bundled models:</p><ul>
<li>TotalSegmentator: Wasserthal J. et al. <i>TotalSegmentator: Robust Segmentation of 104 Anatomic Structures
in CT Images</i>, Radiology: Artificial Intelligence 2023 (Apache-2.0 test files).</li>
<li>Soft-tissue sarcoma CT (CC BY 3.0): Vallieres M., Freeman C. R., Skamene S. R., El Naqa I. (2015). The
Cancer Imaging Archive, doi:10.7937/K9/TCIA.2015.7GO2GSKS; Phys. Med. Biol. 60(14):5471,
doi:10.1088/0031-9155/60/14/5471; Clark K. et al. TCIA, J Digit Imaging 26(6):1045-1057, 2013,
doi:10.1007/s10278-013-9622-7; curated by the IBSI validation data set.</li></ul>
"""


class TSFMSegmentation(ScriptedLoadableModule):
    def __init__(self, parent) -> None:  # noqa: ANN001
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TSFM Segmentation")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = ["Segmentations", "Markups"]
        self.parent.contributors = ["TSFMSegmentation developers"]
        self.parent.helpText = _(
            "Segment tumours and organs in 3D with foundation models. <b>Automatic</b>: pick a model and "
            "press Segment. <b>Interactive</b>: place positive/negative points or a box; each prompt refines "
            "the current segment. Review, correct in the embedded Segment Editor, and export reviewed cases "
            "as an nnU-Net v2 dataset for fine-tuning. The backend runs locally (default) or on a remote "
            "GPU server; see the README for the Python scripting API."
        ) + CITATIONS
        # Slicer's terminology selector then lists our context (classes, lesions) beside its own.
        slicer.app.connect("startupCompleted()", _registerTerminology)
        self.parent.acknowledgementText = _(
            "Built on 3D Slicer, PyTorch, MONAI and nnU-Net. Model weights keep their own licenses, shown "
            "with each model."
        )


def _registerTerminology() -> None:
    terminology.register_with_slicer(slicer.modules.terminologies.logic())


@parameterNodeWrapper
class TSFMSegmentationParameterNode:
    """What the GUI shows; the backend token is deliberately not here (it must never be saved)."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    positivePoints: slicer.vtkMRMLMarkupsFiducialNode
    negativePoints: slicer.vtkMRMLMarkupsFiducialNode
    boxRoi: slicer.vtkMRMLMarkupsROINode
    remoteUrl: str = ""
    automaticModel: str = ""
    interactiveModel: str = ""
    useTTA: bool = False
    fastMode: bool = False
    caseId: str = ""


class TSFMSegmentationLogic(ScriptedLoadableModuleLogic):
    """Every action of the module, usable from Slicer's Python console (see README, scripting API)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.connection = Connection()
        self.lastJob: AutomaticJob | None = None
        self.editor: InteractiveEditor | None = None
        self.segmentEditorNode: slicer.vtkMRMLSegmentEditorNode | None = None

    def getParameterNode(self) -> TSFMSegmentationParameterNode:
        return TSFMSegmentationParameterNode(super().getParameterNode())

    # ---- backend ---------------------------------------------------------------------------------
    def startLocalBackend(self, python: str = "", device: str = "auto", timeoutSeconds: float = 180.0,
                          onWait=None) -> dict[str, Any]:  # noqa: ANN001
        """Start ``tsfm-backend serve`` on a free loopback port with ``python`` (Slicer's own when empty)."""
        python = python or sys.executable
        baseEnv = self._environmentFor(python)
        probe = probe_backend(python, base_env=baseEnv)
        if not probe.ok:
            if probe.version is not None and probe.version[:2] < MIN_PYTHON:
                raise RuntimeError(probe.problem + ". Use Slicer 5.10 or newer, or choose a Python 3.10+ environment.")
            raise RuntimeError(f"{probe.problem}\nPress 'Install backend' for Slicer's Python, or choose an "
                               "environment that has tsfm_backend, fastapi and uvicorn.")
        return self.connection.connect_local(python, device, timeoutSeconds, on_wait=onWait, base_env=baseEnv)

    @staticmethod
    def _environmentFor(python: str) -> dict[str, str] | None:
        """Slicer's own Python keeps Slicer's environment; any other one gets the environment Slicer was
        started with, without Slicer's PYTHONHOME and PYTHONPATH (which break another interpreter)."""
        if is_same_interpreter(python):
            return None
        try:
            return slicer.util.startupEnvironment()
        except AttributeError:  # no application (PythonSlicer, scripts): this environment is the startup one
            return dict(os.environ)

    def connectRemote(self, url: str, token: str = "", proxy: str = "", caBundle: str = "") -> dict[str, Any]:
        """Use a backend at ``url``; the token stays in memory only. ``proxy`` (http(s)://host:port) and
        ``caBundle`` (a PEM file of a hospital's certificate authority) are for networks that need them."""
        return self.connection.connect_remote(url, token or None, proxy=proxy or None, ca_bundle=caBundle or None)

    def testConnection(self) -> dict[str, Any]:
        return self.connection.test_connection()

    def backendSummary(self) -> tuple[str, str]:
        """(device, GPU and versions; a warning when the backend computes on the CPU)."""
        return describe_info(self.connection.test_connection())

    def stopBackend(self) -> None:
        self.closeInteractive()
        self.connection.disconnect()

    def models(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Models the backend serves, optionally only "automatic" or "promptable" ones."""
        return [m for m in self.connection.require().models() if kind is None or m.get("kind") == kind]

    def modelChoices(self, use: str) -> list[dict[str, Any]]:
        """Models to offer for ``use``: "automatic" (jobs) or "interactive" (sessions: the promptable models
        and automatic ones whose weights also take clicks, such as VISTA3D)."""
        return model_choices(self.connection.require().models(), use)

    def downloadableModels(self) -> list[dict[str, Any]]:
        """Catalog entries the backend can download and does not serve yet."""
        return offered_models(self.connection.require().catalog())

    def startModelDownload(self, modelId: str, acceptLicense: bool = False) -> ModelDownload:
        """Have the backend download a catalog model; poll or wait on the returned download."""
        download = ModelDownload(self.connection.require(), modelId, accept_license=acceptLicense)
        download.start()
        return download

    def installBackend(self, askConfirmation: bool = True) -> None:
        """Install PyTorch (PyTorch extension, CUDA build matching the driver) if it is missing, then the
        backend's packages into Slicer's Python with the installed torch held as it is."""
        if sys.version_info[:2] < MIN_PYTHON:
            raise RuntimeError(f"Slicer's Python {sys.version.split()[0]} is too old for the backend: use Slicer "
                               "5.10 or newer, or start the backend with an external Python 3.10+ environment")
        try:
            import PyTorchUtils
        except ImportError as error:
            raise RuntimeError("install the 'PyTorch' extension from the Extensions Manager first") from error
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if torchLogic.installTorch(askConfirmation=askConfirmation,
                                       torchVersionRequirement=TORCH_REQUIREMENT) is None:
                raise RuntimeError("PyTorch was not installed")
        torchVersion = installed_torch_version()
        problem = torch_problem(torchVersion, TORCH_REQUIREMENT)
        if problem:
            raise RuntimeError(problem)
        # The backend's own code ships with the module and reaches the server process via PYTHONPATH
        # (backend_process); only its third-party packages are installed here.
        if not bundled_backend_dirs(MODULE_DIR):
            raise RuntimeError(f"the backend package is missing next to {MODULE_DIR}; reinstall the extension")
        # The installed torch (often a CUDA build) is pinned, so no requirement can make pip replace it.
        slicer.util.pip_install(pip_arguments(MODULE_DIR / "Resources" / "backend-requirements.txt", torchVersion,
                                              Path(slicer.app.temporaryPath) / "TSFMSegmentation"))

    # ---- automatic -------------------------------------------------------------------------------
    def startSegmentation(self, volumeNode, modelId: str, options: dict[str, Any] | None = None) -> AutomaticJob:  # noqa: ANN001
        """Upload the volume and queue a whole-volume job; poll it with ``pollSegmentation``."""
        self.connection.check_upload_allowed()
        self.lastJob = AutomaticJob(self.connection.require(), volumeNode, modelId, options)
        self.lastJob.start()
        return self.lastJob

    def pollSegmentation(self) -> JobStatus:
        """One non-blocking status check of the running job (the widget calls it from a timer)."""
        return self.lastJob.poll()

    def cancelSegmentation(self) -> None:
        if self.lastJob is not None:
            self.lastJob.cancel()

    def finishSegmentation(self, segmentationNode=None):  # noqa: ANN001, ANN201
        """Turn the finished job's label map into named, coloured segments on the volume's grid."""
        node, _created = self.lastJob.result_into(segmentationNode, backend=self._backendName())
        return node

    def segment(self, volumeNode, modelId: str, options: dict[str, Any] | None = None,  # noqa: ANN001, ANN201
                segmentationNode=None, progressCallback=None, timeoutSeconds: float | None = None):  # noqa: ANN001
        """Blocking whole-volume segmentation for scripts: returns the segmentation node."""
        job = self.startSegmentation(volumeNode, modelId, options)
        job.wait(poll_s=0.25, timeout_s=timeoutSeconds, on_progress=progressCallback)
        return self.finishSegmentation(segmentationNode)

    # ---- interactive -----------------------------------------------------------------------------
    def startInteractive(self, volumeNode, modelId: str, segmentationNode=None,  # noqa: ANN001
                         segmentId: str | None = None) -> InteractiveEditor:
        """Open a prompt session on ``volumeNode``; clicks then go to ``addPoint``/``setBox``. With
        ``segmentId`` (an existing segment, e.g. an automatic result) the clicks refine that segment."""
        self.connection.check_upload_allowed()
        if self.editor is not None:
            self.editor.close()
        self.editor = InteractiveEditor(self.connection.require(), volumeNode, modelId, segmentationNode,
                                        settings=self.editSettings, backend=self._backendName())
        self.editor.start(segmentId or None)
        return self.editor

    def ensureSegmentEditorNode(self) -> slicer.vtkMRMLSegmentEditorNode:
        """The embedded Segment Editor's node, made again when it is gone (File > Close Scene removes it).
        A new one leaves other segments alone: clicks must not overwrite what is already segmented."""
        node = self.segmentEditorNode
        if node is None or not slicer.mrmlScene.IsNodePresent(node):
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "TSFMSegmentation editor")
            node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
            self.segmentEditorNode = node
        return node

    def closeInteractive(self) -> None:
        """End the prompt session (its server session too); the segments stay as they are."""
        if self.editor is not None:
            self.editor.close()
            self.editor = None

    def editSettings(self) -> EditSettings:
        """The Segment Editor's masking/overwrite settings in force (defaults when none is set)."""
        return EditSettings.from_editor_node(self.segmentEditorNode)

    def addPoint(self, rasPoint, positive: bool = True):  # noqa: ANN001, ANN201
        """One click at world RAS (any view); returns the change written into the current segment."""
        return self._requireEditor().click(tuple(float(v) for v in rasPoint), positive)

    def setBox(self, roiNode):  # noqa: ANN001, ANN201
        return self._requireEditor().box(roiNode)

    def undo(self) -> bool:
        return self._requireEditor().undo()

    def redo(self) -> bool:
        return self._requireEditor().redo()

    def nextSegment(self, name: str | None = None) -> str:
        return self._requireEditor().next_segment(name)

    def resetSegment(self) -> None:
        self._requireEditor().reset()

    def _requireEditor(self) -> InteractiveEditor:
        if self.editor is None:
            raise RuntimeError("start an interactive session first (startInteractive)")
        return self.editor

    def _backendName(self) -> str:
        client = self.connection.client
        return client.base_url if client is not None else ""

    # ---- review and export -------------------------------------------------------------------------
    def segmentProvenance(self, segmentationNode, volumeNode) -> list[dict[str, Any]]:  # noqa: ANN001
        """Per segment: name, model, source, prompts, review status and whether it was edited."""
        return provenance.describe_all(segmentationNode, volumeNode)

    def reviewSegment(self, segmentationNode, segmentId: str, accepted: bool, reviewer: str = "") -> None:  # noqa: ANN001
        provenance.set_review(segmentationNode, segmentId, provenance.ACCEPTED if accepted else provenance.REJECTED,
                              reviewer)

    def exportCase(self, datasetFolder: str, caseId: str, volumeNode, segmentationNode,  # noqa: ANN001
                   overwrite: bool = False, annotator: str = "", includeUnreviewed: bool = False) -> export.ExportedCase:
        """Append one case to an nnU-Net v2 raw dataset: the accepted segments only, unless
        ``includeUnreviewed`` (rejected ones never). Raises CaseExistsError unless ``overwrite``."""
        return export.export_case(datasetFolder, caseId, volumeNode, segmentationNode, overwrite=overwrite,
                                  annotator=annotator, include_unreviewed=includeUnreviewed)


# ---- Widget ----------------------------------------------------------------------------------------


class TSFMSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """A view: reads the GUI into Logic calls, shows Logic state. No computation here."""

    POLL_MS = 500
    PROXY_SETTING = "TSFMSegmentation/RemoteProxy"
    CA_BUNDLE_SETTING = "TSFMSegmentation/RemoteCABundle"
    EXPORT_FOLDER_SETTING = "TSFMSegmentation/ExportFolder"
    HEARTBEAT_MS = 30000

    def __init__(self, parent=None) -> None:  # noqa: ANN001
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._pollTimer = None
        self._heartbeatTimer = None
        self._shortcuts: list = []
        self._downloadTimer = None
        self._download: ModelDownload | None = None
        self._catalog: dict[str, dict[str, Any]] = {}
        self._settingEditor = False  # True while this module itself changes the embedded Segment Editor

    def setup(self) -> None:
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TSFMSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TSFMSegmentationLogic()
        self.logic.connection.confirm_upload = self._confirmUpload
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.ensureSegmentEditorNode())
        self.ui.reviewTable.setHorizontalHeaderLabels([_("Segment"), _("Model"), _("Source"), _("Edited"),
                                                       _("Status")])
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_MS)
        self._pollTimer.connect("timeout()", self.onPollJob)
        self._heartbeatTimer = qt.QTimer()
        self._heartbeatTimer.setInterval(self.HEARTBEAT_MS)
        self._heartbeatTimer.connect("timeout()", self.onHeartbeat)
        self._downloadTimer = qt.QTimer()
        self._downloadTimer.setInterval(self.POLL_MS)
        self._downloadTimer.connect("timeout()", self.onPollDownload)

        connections = [
            (self.ui.startBackendButton, self.onStartBackend), (self.ui.testConnectionButton, self.onTestConnection),
            (self.ui.installBackendButton, self.onInstallBackend), (self.ui.segmentButton, self.onSegment),
            (self.ui.startInteractiveButton, self.onStartInteractive), (self.ui.undoButton, self.onUndo),
            (self.ui.redoButton, self.onRedo), (self.ui.nextSegmentButton, self.onNextSegment),
            (self.ui.resetButton, self.onReset), (self.ui.boxButton, self.onBox),
            (self.ui.acceptButton, lambda: self.onReview(True)), (self.ui.rejectButton, lambda: self.onReview(False)),
            (self.ui.refreshReviewButton, self.updateReviewTable), (self.ui.exportButton, self.onExport),
            (self.ui.downloadModelButton, self.onDownloadModel),
        ]
        for button, slot in connections:
            button.connect("clicked(bool)", lambda _checked, slot=slot: self._run(slot))
        self.ui.positivePointButton.connect("clicked(bool)", lambda on: self._run(lambda: self.onPlacePoints(True, on)))
        self.ui.negativePointButton.connect("clicked(bool)", lambda on: self._run(lambda: self.onPlacePoints(False, on)))
        self.ui.localRadioButton.connect("toggled(bool)", self.updateBackendControls)
        self.ui.segmentEditorWidget.connect("currentSegmentIDChanged(QString)",
                                            lambda segmentId: self._run(lambda: self.onEditorSegmentChanged(segmentId)))
        self.ui.segmentEditorWidget.connect("segmentationNodeChanged(vtkMRMLSegmentationNode*)",
                                            lambda node: self._run(lambda: self.onEditorSegmentationChanged(node)))
        self.ui.downloadProgressBar.visible = False  # shown while a download runs
        settings = qt.QSettings()
        # Not Slicer's working folder: a dataset folder in the user's documents (or $nnUNet_raw).
        self.ui.exportFolderButton.directory = settings.value(self.EXPORT_FOLDER_SETTING, "") or str(
            export.default_dataset_folder(slicer.app.defaultScenePath, nnunet_raw=os.environ.get("nnUNet_raw")))
        self.ui.proxyLineEdit.text = settings.value(self.PROXY_SETTING, "")
        self.ui.caBundlePathLineEdit.currentPath = settings.value(self.CA_BUNDLE_SETTING, "")
        if sys.version_info[:2] < MIN_PYTHON:
            self.ui.backendStatusLabel.text = _(
                "This Slicer's Python ({version}) is too old for the local backend: use Slicer 5.10 or newer, "
                "choose an external Python 3.10+ environment, or connect to a remote backend.").format(
                version=sys.version.split()[0])
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.updateBackendControls()

    def _run(self, slot) -> None:  # noqa: ANN001
        with slicer.util.tryWithErrorDisplay(_("TSFM Segmentation failed."), waitCursor=True):
            slot()

    def cleanup(self) -> None:
        self._pollTimer.stop()
        self._heartbeatTimer.stop()
        self._downloadTimer.stop()
        self.uninstallShortcuts()
        self.removeObservers()
        self.logic.stopBackend()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.installShortcuts()

    def exit(self) -> None:
        # As Slicer's Segment Editor module does: no effect keeps handling the views of other modules.
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.segmentEditorWidget.removeViewObservations()
        self.uninstallShortcuts()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def installShortcuts(self) -> None:
        """Our keys and the embedded Segment Editor's, on the main window while the module is shown."""
        import qt

        self.uninstallShortcuts()
        actions = {"positive_points": lambda: self.onPlacePoints(True, True),
                   "negative_points": lambda: self.onPlacePoints(False, True), "box": self.onBox,
                   "undo": self.onUndo, "redo": self.onRedo, "next_segment": self.onNextSegment}
        for action, key in SHORTCUTS.items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", lambda slot=actions[action]: self._run(slot))
            self._shortcuts.append(shortcut)
        self.ui.segmentEditorWidget.installKeyboardShortcuts()

    def uninstallShortcuts(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
            shortcut.deleteLater()
        self._shortcuts = []
        self.ui.segmentEditorWidget.uninstallKeyboardShortcuts()

    def onSceneStartClose(self, caller, event) -> None:  # noqa: ANN001
        self.setParameterNode(None)
        # As Slicer's Segment Editor module does (this also ends the active effect).
        self.ui.segmentEditorWidget.setSegmentationNode(None)
        self.ui.segmentEditorWidget.removeViewObservations()
        # The session's volume and segmentation go with the scene.
        self._heartbeatTimer.stop()
        self.logic.closeInteractive()

    def onSceneEndClose(self, caller, event) -> None:  # noqa: ANN001
        # Closing the scene removed the embedded editor's node with everything else.
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.ensureSegmentEditorNode())
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, parameterNode) -> None:  # noqa: ANN001
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    # ---- backend ---------------------------------------------------------------------------------
    def updateBackendControls(self, *_args) -> None:  # noqa: ANN002
        local = self.ui.localRadioButton.checked
        for widget in (self.ui.pythonPathLineEdit, self.ui.deviceComboBox, self.ui.startBackendButton,
                       self.ui.installBackendButton):
            widget.enabled = local
        for widget in (self.ui.remoteUrlLineEdit, self.ui.tokenLineEdit, self.ui.proxyLineEdit,
                       self.ui.caBundlePathLineEdit):
            widget.enabled = not local

    def onInstallBackend(self) -> None:
        self.logic.installBackend(askConfirmation=True)
        slicer.util.infoDisplay(_("The backend is installed. Press 'Start local backend'."))

    def onStartBackend(self) -> None:
        self.ui.backendStatusLabel.text = _("Starting the local backend...")
        # The wait keeps the GUI alive; a second press meanwhile would start a second server.
        self.ui.startBackendButton.enabled = False
        try:
            self.logic.startLocalBackend(self.ui.pythonPathLineEdit.currentPath, self.ui.deviceComboBox.currentText,
                                         onWait=lambda elapsed: slicer.app.processEvents())
        finally:
            self.ui.startBackendButton.enabled = self.ui.localRadioButton.checked
        self.onTestConnection()

    def onTestConnection(self) -> None:
        if not self.ui.localRadioButton.checked:
            import qt

            proxy, caBundle = self.ui.proxyLineEdit.text.strip(), self.ui.caBundlePathLineEdit.currentPath
            self.logic.connectRemote(self._parameterNode.remoteUrl, self.ui.tokenLineEdit.text, proxy, caBundle)
            # Network settings belong to this computer, not to the scene (a proxy URL may hold a password).
            settings = qt.QSettings()
            settings.setValue(self.PROXY_SETTING, proxy)
            settings.setValue(self.CA_BUNDLE_SETTING, caBundle)
        summary, warning = self.logic.backendSummary()
        self.ui.backendStatusLabel.text = _("Connected: ") + summary
        self.ui.cpuWarningLabel.text = warning
        self._fillModels(self.ui.automaticModelComboBox, AUTOMATIC)
        self._fillModels(self.ui.interactiveModelComboBox, INTERACTIVE)
        self._fillCatalog()

    def _fillModels(self, combo, use: str) -> None:  # noqa: ANN001
        import qt

        combo.clear()
        for model in self.logic.modelChoices(use):
            combo.addItem(model["id"])
            combo.setItemData(combo.count - 1, f"{model.get('description', '')} ({model.get('license', '')})",
                              qt.Qt.ToolTipRole)
            if model.get("default"):
                combo.setCurrentIndex(combo.count - 1)

    def _fillCatalog(self) -> None:
        import qt

        combo = self.ui.downloadModelComboBox
        combo.clear()
        try:
            entries = self.logic.downloadableModels()
        except Exception as error:  # an older backend without a catalog: say so, keep the rest working
            entries = []
            self.ui.downloadStatusLabel.text = _("No model catalog: {error}").format(error=error)
        self._catalog = {entry["id"]: entry for entry in entries}
        for entry in entries:
            combo.addItem(entry_label(entry), entry["id"])
            combo.setItemData(combo.count - 1, entry.get("notes") or entry.get("homepage") or "", qt.Qt.ToolTipRole)
        self.ui.downloadModelButton.enabled = bool(entries)
        if not entries and not self.ui.downloadStatusLabel.text:
            self.ui.downloadStatusLabel.text = _("Every model of the catalog is installed.")
        elif entries and self.ui.automaticModelComboBox.count == 0:
            self.ui.downloadStatusLabel.text = _("No automatic model yet: download one here.")

    def onDownloadModel(self) -> None:
        if self._downloadTimer.isActive():
            self._download.cancel()
            self.ui.downloadModelButton.enabled = False
            self.ui.downloadStatusLabel.text = _("Cancelling...")
            return
        entry = self._catalog.get(self.ui.downloadModelComboBox.currentData)
        if entry is None:
            return
        accept = False
        if needs_license_acceptance(entry):
            accept = slicer.util.confirmYesNoDisplay(
                _("{model} is published under {license} ({homepage}). Do you accept its license?").format(
                    model=entry["id"], license=entry.get("license", "?"), homepage=entry.get("homepage", "")))
            if not accept:
                return
        self._download = self.logic.startModelDownload(entry["id"], acceptLicense=accept)
        self.ui.downloadModelButton.text = _("Cancel")
        self.ui.downloadModelComboBox.enabled = False
        self.ui.downloadProgressBar.value = 0
        self.ui.downloadProgressBar.visible = True
        self._downloadTimer.start()

    def onPollDownload(self) -> None:
        try:
            status = self._download.poll()
        except Exception as error:
            status = None
            slicer.util.errorDisplay(str(error))
        if status is not None:
            self.ui.downloadProgressBar.value = int(1000 * status.fraction)
            self.ui.downloadStatusLabel.text = status.message
            if not status.finished:
                return
        self._downloadTimer.stop()
        self.ui.downloadModelButton.text = _("Download")
        self.ui.downloadModelButton.enabled = True
        self.ui.downloadModelComboBox.enabled = True
        self.ui.downloadProgressBar.visible = False
        if status is None:
            return
        if status.succeeded:
            self.onTestConnection()
        elif status.state == "cancelled":
            self.ui.downloadStatusLabel.text = _("Cancelled; Download again resumes where it stopped.")
        else:
            slicer.util.errorDisplay(status.message)

    def _confirmUpload(self, url: str) -> bool:
        return slicer.util.confirmYesNoDisplay(
            _("The image will be sent to {url}, a server outside this computer. Patient data must only go "
              "to servers allowed to receive it. Send it?").format(url=url))

    # ---- automatic -------------------------------------------------------------------------------
    def onSegment(self) -> None:
        if self._pollTimer.isActive():
            self.logic.cancelSegmentation()
            self.ui.jobStatusLabel.text = _("Cancelling...")
            return
        options = {"tta": self._parameterNode.useTTA, "fast": self._parameterNode.fastMode}
        self.logic.startSegmentation(self._parameterNode.inputVolume, self.ui.automaticModelComboBox.currentText,
                                     options)
        self.ui.segmentButton.text = _("Cancel")
        self.ui.segmentProgressBar.value = 0
        self._pollTimer.start()

    def onPollJob(self) -> None:
        try:
            status = self.logic.pollSegmentation()
        except Exception as error:
            self._pollTimer.stop()
            self.ui.segmentButton.text = _("Segment")
            slicer.util.errorDisplay(str(error))
            return
        self.ui.segmentProgressBar.value = int(100 * status.progress)
        self.ui.jobStatusLabel.text = f"{status.state}: {status.message}"
        if not status.finished:
            return
        self._pollTimer.stop()
        self.ui.segmentButton.text = _("Segment")
        if status.state == "done":
            with slicer.util.tryWithErrorDisplay(_("Could not read the result."), waitCursor=True):
                node = self.logic.finishSegmentation(self._parameterNode.outputSegmentation)
                self._parameterNode.outputSegmentation = node
                self.ui.segmentEditorWidget.setSegmentationNode(node)
                self.ui.segmentEditorWidget.setSourceVolumeNode(self._parameterNode.inputVolume)
                self.updateReviewTable()

    # ---- interactive -----------------------------------------------------------------------------
    def onStartInteractive(self) -> None:
        # Clicks refine the segment selected in the Segment Editor, when it belongs to the output.
        editorWidget, segmentation = self.ui.segmentEditorWidget, self._parameterNode.outputSegmentation
        current = editorWidget.currentSegmentID() if segmentation is not None and \
            editorWidget.segmentationNode() is segmentation else ""
        # The Segment Editor selects a segmentation added to the scene and then its first segment on its
        # own; those are not the user's choice and must not redirect the session being set up here.
        self._settingEditor = True
        try:
            editor = self.logic.startInteractive(self._parameterNode.inputVolume,
                                                 self.ui.interactiveModelComboBox.currentText, segmentation,
                                                 current or None)
            self._parameterNode.outputSegmentation = editor.segmentation_node
            self.ui.segmentEditorWidget.setSegmentationNode(editor.segmentation_node)
            self.ui.segmentEditorWidget.setSourceVolumeNode(self._parameterNode.inputVolume)
            self.ui.segmentEditorWidget.setCurrentSegmentID(editor.segment_id)
        finally:
            self._settingEditor = False
        for role, attribute in (("positive", "positivePoints"), ("negative", "negativePoints")):
            if getattr(self._parameterNode, attribute) is None:
                setattr(self._parameterNode, attribute, create_prompt_list(role))
            editor.watch(getattr(self._parameterNode, attribute), on_error=self.onPromptError)
        self._heartbeatTimer.start()
        self.ui.interactiveStatusLabel.text = _("Place points (P / N) or a box (Shift+B).")

    def onPlacePoints(self, positive: bool, on: bool = True) -> None:
        node = self._parameterNode.positivePoints if positive else self._parameterNode.negativePoints
        if node is None:
            self.ui.positivePointButton.checked = self.ui.negativePointButton.checked = False
            raise RuntimeError(_("Press Start in the Interactive section first."))
        self.ui.positivePointButton.checked = positive and on
        self.ui.negativePointButton.checked = (not positive) and on
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
        selection.SetActivePlaceNodeID(node.GetID())
        slicer.app.applicationLogic().GetInteractionNode().SetPlaceModePersistence(1 if on else 0)
        slicer.app.applicationLogic().GetInteractionNode().SetCurrentInteractionMode(
            slicer.vtkMRMLInteractionNode.Place if on else slicer.vtkMRMLInteractionNode.ViewTransform)

    def onEditorSegmentChanged(self, segmentId: str) -> None:
        """The user picked another segment in the Segment Editor: the next prompts refine that one."""
        editor = self.logic.editor
        if self._settingEditor or editor is None or not segmentId or segmentId == editor.segment_id:
            return
        try:
            editor.edit_segment(segmentId, self.ui.segmentEditorWidget.segmentationNode())
        except OtherSegmentation:
            self.onEditorSegmentationChanged(self.ui.segmentEditorWidget.segmentationNode())
            return
        self._clearPromptPoints()

    def onEditorSegmentationChanged(self, node) -> None:  # noqa: ANN001
        """Another segmentation chosen in the Segment Editor: restart the session on it."""
        editor = self.logic.editor
        if self._settingEditor or editor is None or node is None or node is editor.segmentation_node:
            return
        self._parameterNode.outputSegmentation = node
        self.onStartInteractive()

    def _clearPromptPoints(self) -> None:
        for node in (self._parameterNode.positivePoints, self._parameterNode.negativePoints):
            if node is not None:
                node.RemoveAllControlPoints()

    def onPromptError(self, error: Exception) -> None:
        slicer.util.errorDisplay(_("The click could not be used: {error}").format(error=error))

    def onBox(self) -> None:
        """Draw a box: two clicks on one slice give a rectangle on that slice (a 2D box); dragging its
        handles afterwards sends it again. A box already placed is sent as it is."""
        editor = self.logic.editor
        if editor is None:
            raise RuntimeError(_("Press Start in the Interactive section first."))
        roi = self._parameterNode.boxRoi
        if roi is not None and roi.GetNumberOfControlPoints() > 0:
            try:
                editor.watch_box(roi, on_error=self.onPromptError)
                self.logic.setBox(roi)
                return
            except BoxNotReady:
                pass  # half placed or collapsed: draw a new one
        if roi is not None:
            # A placed ROI keeps needing one point after its points are removed: it cannot be drawn again.
            editor.unwatch(roi)
            slicer.mrmlScene.RemoveNode(roi)
        self.ui.positivePointButton.checked = self.ui.negativePointButton.checked = False  # places a box now
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", _("prompt box"))
        roi.CreateDefaultDisplayNodes()  # Slicer places no markup without a display node
        self._parameterNode.boxRoi = roi
        editor.watch_box(roi, on_error=self.onPromptError)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsROINode")
        selection.SetActivePlaceNodeID(roi.GetID())
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetPlaceModePersistence(0)  # else a click after the box starts another, unwatched ROI
        interaction.SetCurrentInteractionMode(slicer.vtkMRMLInteractionNode.Place)

    def onUndo(self) -> None:
        self.logic.undo()

    def onRedo(self) -> None:
        self.logic.redo()

    def onNextSegment(self) -> None:
        self._settingEditor = True  # the new segment changes the Segment Editor's list: keep it selected
        try:
            segmentId = self.logic.nextSegment()
            self.ui.segmentEditorWidget.setCurrentSegmentID(segmentId)
        finally:
            self._settingEditor = False
        self._clearPromptPoints()

    def onReset(self) -> None:
        self.logic.resetSegment()

    def onHeartbeat(self) -> None:
        if self.logic.editor is not None:
            self.logic.editor.heartbeat()

    # ---- review and export -----------------------------------------------------------------------
    def updateReviewTable(self) -> None:
        import qt

        segmentation, volume = self._parameterNode.outputSegmentation, self._parameterNode.inputVolume
        records = self.logic.segmentProvenance(segmentation, volume) if segmentation and volume else []
        self.ui.reviewTable.setRowCount(len(records))
        for row, record in enumerate(records):
            values = (record["name"], record["model"], record["source"], _("yes") if record["edited"] else _("no"),
                      record["status"])
            for column, value in enumerate(values):
                item = qt.QTableWidgetItem(str(value))
                item.setData(qt.Qt.UserRole, record["segment_id"])
                self.ui.reviewTable.setItem(row, column, item)

    def onReview(self, accepted: bool) -> None:
        import qt

        for index in self.ui.reviewTable.selectionModel().selectedRows():
            segmentId = self.ui.reviewTable.item(index.row(), 0).data(qt.Qt.UserRole)
            self.logic.reviewSegment(self._parameterNode.outputSegmentation, segmentId, accepted)
        self.updateReviewTable()

    def onExport(self) -> None:
        import qt

        folder = self.ui.exportFolderButton.directory
        caseId = self._parameterNode.caseId
        volume, segmentation = self._parameterNode.inputVolume, self._parameterNode.outputSegmentation
        try:
            case = self.logic.exportCase(folder, caseId, volume, segmentation)
        except export.CaseExistsError as error:
            if not slicer.util.confirmYesNoDisplay(str(error) + "\n\n" + _("Replace it?")):
                return
            case = self.logic.exportCase(folder, caseId, volume, segmentation, overwrite=True)
        qt.QSettings().setValue(self.EXPORT_FOLDER_SETTING, folder)
        self.ui.exportStatusLabel.text = _("Wrote {image} and {label}").format(image=case.image.name,
                                                                             label=case.label.name)


# ---- Self-test (runs inside Slicer) -------------------------------------------------------------------


class TSFMSegmentationTest(ScriptedLoadableModuleTest):
    """Runs in an installed Slicer with nothing beside it, then on a real case when one is at hand.

    1. Through the module's own buttons, on a generated CT-like phantom with a lesion of known shape
       (``TSFMSegmentationLib.selftest``): install the backend when Slicer's Python lacks it, start it,
       check the default interactive model is selected, click the lesion (Dice against the phantom's
       lesion), undo, draw a 2D box on one slice (Dice), accept the segment, export it; and, when the
       backend serves an automatic model, Segment then Cancel.
    2. One click on a real tumour: $TSFM_SELFTEST_CASE (a folder with ct.nii.gz and mask.nii.gz), else
       the soft-tissue sarcoma STS_005 of the project's shared data beside a source checkout (skipped when
       neither exists). Model: $TSFM_SELFTEST_MODEL or the default; minimum Dice
       $TSFM_SELFTEST_MIN_DICE (0.5).
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_widget_workflow_on_the_phantom()
        self.setUp()
        self.test_click_segments_the_tumour()

    def test_widget_workflow_on_the_phantom(self) -> None:
        import tempfile

        import qt

        volume, lesion = add_phantom()
        slicer.util.selectModule("TSFMSegmentation")
        widget = slicer.modules.tsfmsegmentation.widgetRepresentation().self()
        ui, logic = widget.ui, widget.logic
        widget._parameterNode.inputVolume = volume
        ui.localRadioButton.checked = True
        if not probe_backend(sys.executable).ok:
            self.delayDisplay("Installing the backend into Slicer's Python")
            logic.installBackend(askConfirmation=False)
        # The export below replaces the user's dataset folder; both are put back at the end.
        settings, shownExportFolder = qt.QSettings(), ui.exportFolderButton.directory
        savedExportFolder = settings.value(widget.EXPORT_FOLDER_SETTING)
        ui.startBackendButton.click()
        self.assertIsNotNone(logic.connection.client, ui.backendStatusLabel.text)
        try:
            defaults = [model["id"] for model in logic.modelChoices(INTERACTIVE) if model.get("default")]
            self.assertEqual(ui.interactiveModelComboBox.currentText, defaults[0])

            ui.startInteractiveButton.click()
            editor = logic.editor
            self.assertIsNotNone(editor, "Start did not open an interactive session")
            k, j, i = deepest_voxel(lesion, PHANTOM_SPACING_KJI)
            widget._parameterNode.positivePoints.AddControlPoint(
                *image_geometry(volume).ijk_to_world_points([[i, j, k]])[0])
            clickDice = dice(current_segment_mask(editor), lesion)
            self.delayDisplay(f"Dice after one click with {defaults[0]}: {clickDice:.3f}")
            self.assertGreaterEqual(clickDice, MIN_CLICK_DICE)
            ui.undoButton.click()
            self.assertFalse(current_segment_mask(editor).any(), "Undo did not empty the segment")

            ui.nextSegmentButton.click()
            ui.boxButton.click()  # a new ROI in place mode; here it is put where two clicks would put it
            roi = widget._parameterNode.boxRoi
            slicer.app.applicationLogic().GetInteractionNode().SetCurrentInteractionMode(
                slicer.vtkMRMLInteractionNode.ViewTransform)
            place_box(roi, *lesion_box_world(volume, lesion, on_one_slice=True))
            ui.boxButton.click()  # a placed box is sent as it is
            boxDice = dice(current_segment_mask(editor), lesion)
            self.delayDisplay(f"Dice after a 2D box: {boxDice:.3f}")
            self.assertGreaterEqual(boxDice, MIN_BOX_DICE)

            widget.updateReviewTable()
            rows = [row for row in range(ui.reviewTable.rowCount)
                    if ui.reviewTable.item(row, 0).data(qt.Qt.UserRole) == editor.segment_id]
            self.assertEqual(len(rows), 1)
            ui.reviewTable.selectRow(rows[0])
            ui.acceptButton.click()
            folder = Path(tempfile.mkdtemp()) / "Dataset999_SelfTest"
            ui.exportFolderButton.directory = str(folder)
            widget._parameterNode.caseId = "phantom"
            ui.exportButton.click()
            self.assertTrue((folder / "labelsTr" / f"phantom{export.FILE_ENDING}").is_file(), ui.exportStatusLabel.text)

            if ui.automaticModelComboBox.count:
                ui.segmentButton.click()
                self.assertTrue(widget._pollTimer.isActive(), ui.jobStatusLabel.text)
                ui.segmentButton.click()  # Cancel
                for _step in range(600):
                    if not widget._pollTimer.isActive():
                        break
                    slicer.app.processEvents()
                    qt.QThread.msleep(50)
                # "Cancelling..." is shown at the press: only the job's final state proves the cancel.
                self.assertFalse(widget._pollTimer.isActive(), ui.jobStatusLabel.text)
                self.assertTrue(ui.jobStatusLabel.text.startswith("cancelled"), ui.jobStatusLabel.text)
            else:
                self.delayDisplay("No automatic model installed: Segment and Cancel not tested")
        finally:
            logic.stopBackend()
            ui.exportFolderButton.directory = shownExportFolder
            if savedExportFolder is None:
                settings.remove(widget.EXPORT_FOLDER_SETTING)
            else:
                settings.setValue(widget.EXPORT_FOLDER_SETTING, savedExportFolder)
        self.delayDisplay("Workflow test passed")

    def _case_folder(self) -> Path:
        default = MODULE_DIR.parent.parent / "shared" / "data" / "sts" / "STS_005"
        return Path(os.environ.get("TSFM_SELFTEST_CASE", default))

    def test_click_segments_the_tumour(self) -> None:
        folder = self._case_folder()
        if not (folder / "ct.nii.gz").exists():
            self.delayDisplay(f"Self-test skipped: no test case at {folder} (set TSFM_SELFTEST_CASE)")
            return
        volume = slicer.util.loadVolume(str(folder / "ct.nii.gz"))
        reference = slicer.util.arrayFromVolume(slicer.util.loadLabelVolume(str(folder / "mask.nii.gz")))
        logic = TSFMSegmentationLogic()
        logic.startLocalBackend(onWait=lambda elapsed: slicer.app.processEvents())
        try:
            models = logic.modelChoices(INTERACTIVE)
            self.assertTrue(models, "the backend serves no interactive model")
            default = next((m["id"] for m in models if m.get("default")), models[0]["id"])
            model = os.environ.get("TSFM_SELFTEST_MODEL", default)
            score = one_click_dice(logic, volume, reference, model)
            self.delayDisplay(f"Dice after one click with {model}: {score:.3f}")
            self.assertGreaterEqual(score, float(os.environ.get("TSFM_SELFTEST_MIN_DICE", "0.5")))
        finally:
            logic.stopBackend()
        self.delayDisplay("Test passed")
