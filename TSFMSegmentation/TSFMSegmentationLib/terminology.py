"""Standard codes, names and colours for the class names models emit.

The codes and colours live in one file, ``Resources/Terminology/SegmentationCategoryTypeModifier-
TSFMSegmentation.term.json``: a terminology context in Slicer's own format (the dcmqi segment-context
schema that Slicer's Terminologies module reads), with SNOMED CT categories, types and laterality
modifiers. Where Slicer's bundled lists (3D Slicer General Anatomy, DICOM master list) hold the same
structure, the file uses their code meaning, ``3dSlicerLabel`` and ``recommendedDisplayRGBValue``, so
segments look the same as ones a user codes by hand.

``Resources/Terminology/class-names.json`` maps the class names of common models (TotalSegmentator v1
and v2, AbdomenAtlas) and lesion words ("tumour", "gtv") to a ``3dSlicerLabel`` of that file. A name
that already is a label ("liver", "Left kidney") needs no line there. A lesion named after an organ
("kidney_cyst_left", "liver tumour") gets the lesion's type with the organ as anatomic region.

A segment's entry is stored the way Slicer serialises it (``TerminologyEntry`` tag:
``context~category~type~type modifier~region context~region~region modifier``, each code as
``scheme^value^meaning``). Names found nowhere keep their name and Slicer's automatic colour.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

RESOURCES = Path(__file__).resolve().parents[1] / "Resources" / "Terminology"
TERMINOLOGY_FILE = RESOURCES / "SegmentationCategoryTypeModifier-TSFMSegmentation.term.json"
CLASS_NAMES_FILE = RESOURCES / "class-names.json"
# The region context Slicer loads by default (AnatomicRegionAndModifier-DICOM-Master).
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

Code = tuple[str, str, str]

ANATOMICAL_STRUCTURE: Code = ("SCT", "123037004", "Anatomical Structure")
ALTERED_STRUCTURE: Code = ("SCT", "49755003", "Morphologically Altered Structure")
LEFT: Code = ("SCT", "7771000", "Left")
RIGHT: Code = ("SCT", "24028007", "Right")
EMPTY: Code = ("", "", "")


def _code(item: dict[str, Any]) -> Code:
    return (item["CodingSchemeDesignator"], item["CodeValue"], item["CodeMeaning"])


def _canonical(name: str) -> str:
    """Lower case, words separated by one space: "Kidney_Left" -> "kidney left"."""
    return re.sub(r"[_\-\s]+", " ", name.strip().lower()).strip()


@dataclass(frozen=True)
class TerminologyEntry:
    """A segment's standard meaning: category, type, optional laterality and anatomic region, colour (0-255)."""

    display_name: str
    category: Code
    type: Code
    modifier: Code
    rgb: tuple[int, int, int]
    region: Code = EMPTY
    region_modifier: Code = EMPTY

    def serialized(self) -> str:
        """The entry exactly as vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry writes it."""
        def code(value: Code) -> str:
            return "^".join(value)

        return "~".join([CONTEXT, code(self.category), code(self.type), code(self.modifier),
                         ANATOMIC_CONTEXT, code(self.region), code(self.region_modifier)])


def _read_table(terminology_file: Path, class_names_file: Path) -> tuple[str, dict[str, TerminologyEntry],
                                                                        dict[str, str]]:
    """(context name, {canonical name: entry}, {canonical class name: canonical label}).

    Every ``3dSlicerLabel`` names its entry; so does every type's code meaning where no label took it
    ("kidney" is the kidney without laterality, coloured like its left modifier).
    """
    document = json.loads(terminology_file.read_text(encoding="utf-8"))
    entries: dict[str, TerminologyEntry] = {}
    by_meaning: dict[str, TerminologyEntry] = {}
    for category in document["SegmentationCodes"]["Category"]:
        for kind in category.get("Type", []):
            modifiers = kind.get("Modifier") or []
            for item in modifiers or [kind]:
                label = item["3dSlicerLabel"]
                entries[_canonical(label)] = TerminologyEntry(
                    display_name=_capitalized(label), category=_code(category), type=_code(kind),
                    modifier=_code(item) if modifiers else EMPTY, rgb=_rgb(item))
            colour = kind if "recommendedDisplayRGBValue" in kind else modifiers[0]
            by_meaning.setdefault(_canonical(kind["CodeMeaning"]), TerminologyEntry(
                display_name=kind["CodeMeaning"], category=_code(category), type=_code(kind), modifier=EMPTY,
                rgb=_rgb(colour)))
    for key, entry in by_meaning.items():
        entries.setdefault(key, entry)
    names = json.loads(class_names_file.read_text(encoding="utf-8"))["names"]
    aliases = {_canonical(name): _canonical(label) for name, label in names.items()}
    return document["SegmentationCategoryTypeContextName"], entries, aliases


def _capitalized(label: str) -> str:
    return label[:1].upper() + label[1:]


def _rgb(item: dict[str, Any]) -> tuple[int, int, int]:
    red, green, blue = (int(c) for c in item["recommendedDisplayRGBValue"])
    return red, green, blue


CONTEXT, _ENTRIES, _ALIASES = _read_table(TERMINOLOGY_FILE, CLASS_NAMES_FILE)

# Words that name the same structure, for dataset label keys (``normalize``).
_SYNONYMS = {
    "tumor": "neoplasm", "tumour": "neoplasm", "gtv": "neoplasm", "cancer": "neoplasm",
    "oesophagus": "esophagus", "gall bladder": "gallbladder", "ivc": "inferior vena cava",
    "bladder": "urinary bladder", "small bowel": "small intestine", "adrenal": "adrenal gland",
    "kidneys": "kidney", "lungs": "lung",
}


def normalize(name: str) -> tuple[str, str]:
    """(structure, side) from a free-form class name: "kidney_left" -> ("kidney", "left")."""
    words = _canonical(name).split()
    side = ""
    for candidate in ("left", "right"):
        if candidate in words:
            side = candidate
            words.remove(candidate)
    structure = " ".join(words)
    return _SYNONYMS.get(structure, structure), side


def _find(name: str) -> TerminologyEntry | None:
    """The entry a name, its name-table line or its normalized form ("IVC", "Kidney Left") names."""
    structure, side = normalize(name)
    for candidate in (_canonical(name), f"{side} {structure}".strip(), f"{structure} {side}".strip()):
        label = _ALIASES.get(candidate, candidate)
        if label in _ENTRIES:
            return _ENTRIES[label]
    return None


def lookup(name: str) -> TerminologyEntry | None:
    """The standard entry for a class name, or None when neither the file nor the name table knows it."""
    entry = _find(name)
    if entry is not None:
        return entry
    # A lesion in an organ: "kidney_cyst_left" -> Cyst, region Kidney, region modifier Left.
    words = _canonical(name).split()
    lesions = [(index, found) for index, word in enumerate(words)
               if (found := _find(word)) is not None and found.category == ALTERED_STRUCTURE]
    if len(lesions) != 1 or len(words) < 2:
        return None
    index, lesion = lesions[0]
    organ = _find(" ".join(words[:index] + words[index + 1:]))
    if organ is None or organ.category != ANATOMICAL_STRUCTURE:
        return None
    organ_label = organ.display_name
    if organ_label[1:2].islower():  # "Left kidney" -> "left kidney", "L5 vertebra" stays
        organ_label = organ_label[:1].lower() + organ_label[1:]
    return replace(lesion, display_name=f"{lesion.display_name} in {organ_label}", region=organ.type,
                   region_modifier=organ.modifier)


def register_with_slicer(terminologies_logic) -> str:  # noqa: ANN001 - vtkSlicerTerminologiesModuleLogic
    """Load the terminology file into Slicer's Terminologies logic (so its selectors list our context).

    Returns the loaded context name; raises RuntimeError when Slicer refuses the file.
    """
    loaded = terminologies_logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
    if loaded != CONTEXT:
        raise RuntimeError(f"Slicer could not load the terminology file {TERMINOLOGY_FILE} (got {loaded!r})")
    return loaded
