"""Standard codes and colours for segment names that models commonly use.

Model class names ("kidney_left", "Liver", "tumour") are mapped to SNOMED CT codes of the DICOM
segmentation property categories and types, with the colours of Slicer's general anatomy list, and
serialized the way Slicer stores a segment's terminology entry (the ``TerminologyEntry`` tag:
``context~category~type~type modifier~anatomic context~region~region modifier``, each code as
``scheme^value^meaning``). Names not in the table keep their name and Slicer's automatic colour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
ABNORMAL_STRUCTURE = ("SCT", "49755003", "Morphologically Abnormal Structure")
LEFT = ("SCT", "7771000", "left")
RIGHT = ("SCT", "24028007", "right")
EMPTY = ("", "", "")

Code = tuple[str, str, str]


@dataclass(frozen=True)
class TerminologyEntry:
    """A segment's standard meaning: category, type, optional laterality, recommended colour (0-255)."""

    display_name: str
    category: Code
    type: Code
    modifier: Code
    rgb: tuple[int, int, int]

    def serialized(self) -> str:
        def code(value: Code) -> str:
            return "^".join(value)

        return "~".join([CONTEXT, code(self.category), code(self.type), code(self.modifier),
                         ANATOMIC_CONTEXT, code(EMPTY), code(EMPTY)])


# normalized name -> (category, type code, type meaning, colour)
_TYPES: dict[str, tuple[Code, str, str, tuple[int, int, int]]] = {
    "liver": (ANATOMICAL_STRUCTURE, "10200004", "Liver", (221, 130, 101)),
    "spleen": (ANATOMICAL_STRUCTURE, "78961009", "Spleen", (157, 108, 162)),
    "kidney": (ANATOMICAL_STRUCTURE, "64033007", "Kidney", (185, 102, 83)),
    "pancreas": (ANATOMICAL_STRUCTURE, "15776009", "Pancreas", (249, 180, 111)),
    "stomach": (ANATOMICAL_STRUCTURE, "69695003", "Stomach", (216, 132, 105)),
    "gallbladder": (ANATOMICAL_STRUCTURE, "28231008", "Gallbladder", (139, 150, 98)),
    "aorta": (ANATOMICAL_STRUCTURE, "15825003", "Aorta", (224, 97, 76)),
    "inferior vena cava": (ANATOMICAL_STRUCTURE, "64131007", "Inferior vena cava", (0, 151, 206)),
    "esophagus": (ANATOMICAL_STRUCTURE, "32849002", "Esophagus", (211, 171, 143)),
    "adrenal gland": (ANATOMICAL_STRUCTURE, "23451007", "Adrenal gland", (249, 186, 150)),
    "lung": (ANATOMICAL_STRUCTURE, "39607008", "Lung", (197, 165, 145)),
    "heart": (ANATOMICAL_STRUCTURE, "80891009", "Heart", (206, 110, 84)),
    "urinary bladder": (ANATOMICAL_STRUCTURE, "89837001", "Urinary bladder", (222, 154, 132)),
    "duodenum": (ANATOMICAL_STRUCTURE, "38848004", "Duodenum", (255, 253, 229)),
    "small intestine": (ANATOMICAL_STRUCTURE, "30315005", "Small intestine", (205, 167, 142)),
    "colon": (ANATOMICAL_STRUCTURE, "71854001", "Colon", (204, 168, 143)),
    "spinal cord": (ANATOMICAL_STRUCTURE, "2748008", "Spinal cord", (244, 214, 49)),
    "brain": (ANATOMICAL_STRUCTURE, "12738006", "Brain", (250, 250, 225)),
    "prostate": (ANATOMICAL_STRUCTURE, "41216001", "Prostate", (230, 158, 140)),
    "neoplasm": (ABNORMAL_STRUCTURE, "108369006", "Neoplasm", (230, 80, 60)),
    "lesion": (ABNORMAL_STRUCTURE, "52988006", "Lesion", (255, 120, 0)),
}

_SYNONYMS = {
    "tumor": "neoplasm", "tumour": "neoplasm", "gtv": "neoplasm", "mass": "neoplasm",
    "cancer": "neoplasm", "oesophagus": "esophagus", "gall bladder": "gallbladder",
    "ivc": "inferior vena cava", "bladder": "urinary bladder", "small bowel": "small intestine",
    "adrenal": "adrenal gland", "kidneys": "kidney", "lungs": "lung",
}


def normalize(name: str) -> tuple[str, str]:
    """(structure, side) from a free-form class name: "kidney_left" -> ("kidney", "left")."""
    words = re.sub(r"[_\-\s]+", " ", name.strip().lower()).split()
    side = ""
    for candidate in ("left", "right"):
        if candidate in words:
            side = candidate
            words.remove(candidate)
    structure = " ".join(words)
    return _SYNONYMS.get(structure, structure), side


def lookup(name: str) -> TerminologyEntry | None:
    """The standard entry for a class name, or None when the structure is not in the table."""
    structure, side = normalize(name)
    if structure not in _TYPES:
        return None
    category, value, meaning, rgb = _TYPES[structure]
    modifier = {"left": LEFT, "right": RIGHT}.get(side, EMPTY)
    display = f"{side.capitalize()} {meaning.lower()}" if side else meaning
    return TerminologyEntry(display, category, ("SCT", value, meaning), modifier, rgb)
