"""The terminology file: Slicer's format, a code, name and colour for every class our models emit, and
segments tagged exactly the way Slicer's own Terminologies logic serialises an entry."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from support.mini_slicer import MODULE_DIR, REPO

sys.path.insert(0, str(MODULE_DIR))

from TSFMSegmentationLib import terminology  # noqa: E402

# Schemas vtkSlicerTerminologiesModuleLogic accepts for a terminology context
# (Modules/Loadable/Terminologies/Logic/vtkSlicerTerminologiesModuleLogic.cxx:60-61).
SLICER_SCHEMAS = {
    "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/segment-context-schema.json#",
    "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#",
}
CODE_FIELDS = {"CodeValue", "CodeMeaning", "CodingSchemeDesignator", "recommendedDisplayRGBValue", "cid",
               "contextGroupName", "UMLSConceptUID", "SNOMEDCTConceptID"}
# dcmqi segment-context-common-schema definitions; modifiers also carry "3dSlicerLabel", which Slicer
# reads for them (PopulateTerminologyTypeFromJson) and its bundled lists use.
CATEGORY_FIELDS = CODE_FIELDS | {"3dSlicerLabel", "showAnatomy", "Type"}
TYPE_FIELDS = CODE_FIELDS | {"3dSlicerLabel", "Modifier"}
MODIFIER_FIELDS = CODE_FIELDS | {"3dSlicerLabel"}


def totalsegmentator_v1() -> list[str]:
    """The 104 classes of the STU-Net TotalSegmentator models, as their recipe lists them."""
    recipe = yaml.safe_load((REPO / "training" / "configs" / "stunet_totalseg_common.yaml").read_text())
    return list(recipe["model"]["classes"].values())


def abdomen_atlas() -> list[str]:
    source = (REPO / "Backend" / "tsfm_backend" / "formats" / "suprem.py").read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ABDOMENATLAS_1_1":
            return list(ast.literal_eval(node.value))
    raise AssertionError("ABDOMENATLAS_1_1 not found")


def verhoeff_valid(number: str) -> bool:
    """SNOMED CT identifiers end in a Verhoeff check digit: a mistyped code fails this."""
    d = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
         [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
         [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
         [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
    p = [list(range(10)), [1, 5, 7, 6, 2, 8, 3, 0, 9, 4]]
    for _ in range(6):
        p.append([p[-1][p[1][j]] for j in range(10)])
    check = 0
    for index, digit in enumerate(reversed(number)):
        check = d[check][p[index % 8][int(digit)]]
    return check == 0


def file_entries() -> list[tuple[dict, dict, dict | None]]:
    """(category, type, modifier or None) for every selectable entry of the terminology file."""
    document = json.loads(terminology.TERMINOLOGY_FILE.read_text(encoding="utf-8"))
    return [(category, kind, modifier) for category in document["SegmentationCodes"]["Category"]
            for kind in category["Type"] for modifier in kind.get("Modifier") or [None]]


def test_verhoeff_check_catches_a_typo() -> None:
    assert verhoeff_valid("108369006") and verhoeff_valid("64033007")
    assert not verhoeff_valid("108369007") and not verhoeff_valid("58830009")


def test_the_file_is_a_terminology_context_slicer_reads() -> None:
    document = json.loads(terminology.TERMINOLOGY_FILE.read_text(encoding="utf-8"))
    assert set(document) == {"SegmentationCategoryTypeContextName", "@schema", "SegmentationCodes"}
    assert document["@schema"] in SLICER_SCHEMAS
    assert document["SegmentationCategoryTypeContextName"] == terminology.CONTEXT
    assert terminology.CONTEXT.startswith("Segmentation category and type - ") and "TSFM" in terminology.CONTEXT
    assert terminology.TERMINOLOGY_FILE.name.endswith(".term.json")  # the extension Slicer's reader lists
    labels = []
    for category in document["SegmentationCodes"]["Category"]:
        assert set(category) <= CATEGORY_FIELDS and isinstance(category["showAnatomy"], bool)
        for kind in category["Type"]:
            assert set(kind) <= TYPE_FIELDS, set(kind) - TYPE_FIELDS
            for modifier in kind.get("Modifier", []):
                assert set(modifier) <= MODIFIER_FIELDS, set(modifier) - MODIFIER_FIELDS
    for category, kind, modifier in file_entries():
        for item in (category, kind, modifier):
            if item is None:
                continue
            assert all(isinstance(item[key], str) and item[key] for key in
                       ("CodingSchemeDesignator", "CodeValue", "CodeMeaning"))
            assert item["CodingSchemeDesignator"] == "SCT" and verhoeff_valid(item["CodeValue"]), item["CodeValue"]
            assert item.get("SNOMEDCTConceptID", item["CodeValue"]) == item["CodeValue"]
        selectable = modifier or kind
        rgb = selectable["recommendedDisplayRGBValue"]
        assert len(rgb) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in rgb)
        labels.append(selectable["3dSlicerLabel"])
    assert len(labels) == len(set(labels)), "every 3dSlicerLabel names one entry"


def test_colours_tell_structures_apart() -> None:
    """One colour per entry; only the two sides of one paired structure may share it (as in Slicer)."""
    owners: dict[tuple[int, ...], set[str]] = {}
    for _, kind, modifier in file_entries():
        rgb = tuple((modifier or kind)["recommendedDisplayRGBValue"])
        owners.setdefault(rgb, set()).add(kind["CodeValue"])
    shared = {rgb: codes for rgb, codes in owners.items() if len(codes) > 1}
    assert shared == {}


def test_every_totalsegmentator_class_gets_a_code_name_and_colour(shared_data: Path) -> None:
    class_maps = json.loads((shared_data / "totalseg" / "totalsegmentator_class_map.json").read_text())
    v1 = totalsegmentator_v1()
    assert len(v1) == 104 == len(set(v1))
    for vocabulary in (v1, list(class_maps["total"].values())):
        serialized = set()
        for name in vocabulary:
            entry = terminology.lookup(name)
            assert entry is not None, name
            assert entry.category in (terminology.ANATOMICAL_STRUCTURE, terminology.ALTERED_STRUCTURE)
            assert entry.type[0] == "SCT" and verhoeff_valid(entry.type[1]) and entry.type[2]
            assert entry.display_name and len(entry.rgb) == 3 and all(0 <= c <= 255 for c in entry.rgb)
            side = {"left": terminology.LEFT, "right": terminology.RIGHT}.get(terminology.normalize(name)[1])
            if side is not None:  # "Left kidney" by modifier, "Left atrium" by its own code
                assert side in (entry.modifier, entry.region_modifier) or side[2] in entry.type[2].title(), name
            serialized.add(entry.serialized())
        assert len(serialized) == len(vocabulary), "two classes of one model must not share a code"
    for name in abdomen_atlas():
        if name not in ("hepatic_vessel", "intestine"):  # no single standard structure
            assert terminology.lookup(name) is not None, name


def test_names_resolve_to_the_structure_they_name() -> None:
    expected = {
        "kidney_left": ("64033007", terminology.LEFT, "Left kidney"),
        "Liver": ("10200004", terminology.EMPTY, "Liver"),
        "vertebrae_L5": ("49668003", terminology.EMPTY, "L5 vertebra"),
        "rib_right_11": ("58830002", terminology.RIGHT, "Right rib 11"),
        "lung_upper_lobe_left": ("45653009", terminology.LEFT, "Superior lobe of left lung"),
        "heart_ventricle_right": ("53085002", terminology.EMPTY, "Right ventricle of heart"),
        "gluteus_minimus_left": ("75297007", terminology.LEFT, "Left gluteus minimus"),
        "postcava": ("64131007", terminology.EMPTY, "Inferior vena cava"),
        "kidney": ("64033007", terminology.EMPTY, "Kidney"),
    }
    for name, (code, modifier, display) in expected.items():
        entry = terminology.lookup(name)
        assert (entry.type[1], entry.modifier, entry.display_name) == (code, modifier, display), name
    assert terminology.lookup("liver").rgb == (221, 130, 101)  # Slicer's General Anatomy colour
    for unknown in ("air", "enhancing tumor", "label_7", ""):
        assert terminology.lookup(unknown) is None, unknown


def test_tumour_and_lesion_resolve_under_our_context() -> None:
    neoplasm = ("SCT", "108369006", "Neoplasm")
    for name in ("tumour", "Tumor", "GTV", "neoplasm"):
        entry = terminology.lookup(name)
        assert (entry.category, entry.type, entry.display_name) == (terminology.ALTERED_STRUCTURE, neoplasm,
                                                                     "Neoplasm")
        assert entry.serialized() == (f"{terminology.CONTEXT}~SCT^49755003^Morphologically Altered Structure~"
                                      "SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~^^~^^")
    assert terminology.lookup("lesion").type == ("SCT", "52988006", "Lesion")
    assert terminology.lookup("metastasis").type == ("SCT", "14799000", "Neoplasm, Secondary")
    in_organ = terminology.lookup("kidney_cyst_left")
    assert (in_organ.type[1], in_organ.region, in_organ.region_modifier, in_organ.display_name) == (
        "367643001", ("SCT", "64033007", "Kidney"), terminology.LEFT, "Cyst in left kidney")
    liver_tumour = terminology.lookup("liver tumour")
    assert liver_tumour.type == neoplasm and liver_tumour.region == ("SCT", "10200004", "Liver")


@pytest.mark.slicer
def test_slicer_loads_the_file_and_finds_every_label() -> None:
    import slicer

    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert terminology.register_with_slicer(logic) == terminology.CONTEXT
    entries = file_entries()
    types = 0
    for index in range(logic.GetNumberOfCategoriesInTerminology(terminology.CONTEXT)):
        category = slicer.vtkSlicerTerminologyCategory()
        assert logic.GetNthCategoryInTerminology(terminology.CONTEXT, index, category)
        types += logic.GetNumberOfTypesInTerminologyCategory(terminology.CONTEXT, category)
    assert types == len({id(kind) for _, kind, _ in entries})
    for _, kind, modifier in entries:
        found = slicer.vtkSlicerTerminologyEntry()
        label = (modifier or kind)["3dSlicerLabel"]
        assert logic.FindTypeInTerminologyBy3dSlicerLabel(terminology.CONTEXT, label, found), label
        assert found.GetTypeObject().GetCodeValue() == kind["CodeValue"]


@pytest.mark.slicer
def test_segments_carry_the_entry_exactly_as_slicer_serialises_it(ct_node) -> None:  # noqa: ANN001
    import slicer
    from TSFMSegmentationLib.segments import labels_to_segmentation

    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    terminology.register_with_slicer(logic)
    ct = slicer.util.arrayFromVolume(ct_node)
    labels = np.zeros(ct.shape, np.uint8)
    labels[ct < -500] = 1
    labels[(ct > -150) & (ct < -50)] = 2
    labels[ct > 200] = 3
    labels[10:14, 40:50, 40:50] = 4
    # class name -> (3dSlicerLabel of the entry, anatomic region label or None)
    names = {1: "kidney_left", 2: "tumour", 3: "vertebrae_L1", 4: "kidney_cyst_right"}
    expected = {"kidney_left": ("left kidney", None), "tumour": ("neoplasm", None),
                "vertebrae_L1": ("L1 vertebra", None), "kidney_cyst_right": ("cyst", "right kidney")}
    node, created = labels_to_segmentation(labels, names, ct_node)
    for value, name in names.items():
        segment = node.GetSegmentation().GetSegment(created[value])
        label, region = expected[name]
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.FindTypeInTerminologyBy3dSlicerLabel(terminology.CONTEXT, label, entry)
        entry.SetRegionContextName(terminology.ANATOMIC_CONTEXT)
        if region is not None:
            organ = slicer.vtkSlicerTerminologyEntry()
            assert logic.FindTypeInTerminologyBy3dSlicerLabel(terminology.CONTEXT, region, organ)
            entry.GetRegionObject().Copy(organ.GetTypeObject())
            entry.GetRegionModifierObject().Copy(organ.GetTypeModifierObject())
        tag = segment.GetTerminology()
        assert tag == logic.SerializeTerminologyEntry(entry), name
        parsed = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(tag, parsed)
        assert parsed.GetTerminologyContextName() == terminology.CONTEXT
        selectable = entry.GetTypeModifierObject() if entry.GetTypeModifierObject().GetCodeValue() \
            else entry.GetTypeObject()
        np.testing.assert_allclose(np.array(segment.GetColor()) * 255, selectable.GetRecommendedDisplayRGBValue(),
                                   atol=0.5)
        assert segment.GetName() == terminology.lookup(name).display_name


def test_every_line_of_the_name_table_names_an_entry_of_the_file() -> None:
    table = json.loads(terminology.CLASS_NAMES_FILE.read_text(encoding="utf-8"))
    assert table["terminology"] == terminology.TERMINOLOGY_FILE.name
    labels = {(modifier or kind)["3dSlicerLabel"] for _, kind, modifier in file_entries()}
    assert sorted(set(table["names"].values()) - labels) == []
    for name, label in table["names"].items():
        assert terminology.lookup(name).display_name.lower() == label.lower(), name
