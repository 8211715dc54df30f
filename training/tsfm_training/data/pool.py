"""A pool of datasets merged into one label space, remembering which classes each case annotates.

TSFM and MultiTalent train one network on many datasets whose label sets differ: a liver-tumour dataset
marks liver and tumour, a kidney dataset marks kidney and tumour. The pool maps each dataset's label
values into shared class ids through a remapping table, and records per case the shared classes its
dataset annotates; the partial-label loss then scores only those. Cases are drawn with probability
proportional to ``1 / sqrt(n)``, n the size of their dataset, so small datasets are seen more often per
case than large ones without dominating.

A class is known by its dataset and its name: "tumour" of a kidney dataset and "tumour" of a liver
dataset are different classes unless the remapping table sends both to one pool class on purpose. So a
pool of several datasets needs a remap entry for each (source labels by value or by name), and the
default pool (``pool_from_config`` without ``classes``) names its classes ``<dataset>: <class>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tsfm_training.data.datasets import Case, Dataset, DatasetError


@dataclass(frozen=True)
class PoolEntry:
    """One case of the pool with its label lookup table and the shared classes it annotates."""

    case: Case
    lookup: np.ndarray  # source label value -> shared class id (0 for background and unmapped values)
    annotated: frozenset[int]


class DatasetPool:
    """Datasets merged through ``remap[dataset name] = {source value: shared class id}``.

    ``classes`` names the shared ids (1..C, 0 is background). A dataset without a remap entry keeps its
    values, which must then be shared ids already.
    """

    def __init__(self, datasets: list[Dataset], classes: dict[int, str],
                 remap: dict[str, dict[int | str, int]] | None = None) -> None:
        if not datasets:
            raise DatasetError("a dataset pool needs at least one dataset")
        self.classes = {int(k): str(v) for k, v in classes.items()}
        if 0 in self.classes or sorted(self.classes) != list(range(1, len(self.classes) + 1)):
            raise DatasetError(f"pool classes must be numbered 1..C without gaps, got {sorted(self.classes)}")
        names = [d.name for d in datasets]
        if len(set(names)) != len(names):
            raise DatasetError(f"datasets of a pool need distinct names (set 'name'), got {names}")
        by_name = {d.name: d for d in datasets}
        unknown = sorted(set(remap or {}) - set(by_name))
        if unknown:
            raise DatasetError(f"remap names datasets {unknown} that are not in the pool")
        remap = {name: {_source_value(by_name[name], s): int(t) for s, t in table.items()}
                 for name, table in (remap or {}).items()}
        unmapped = [d.name for d in datasets if d.name not in remap]
        if len(datasets) > 1 and unmapped:
            raise DatasetError(f"datasets {unmapped} have no pool.remap entry; in a pool of several datasets each "
                               "must say which pool class each of its labels is (same-named classes of two "
                               "datasets are different classes unless mapped to one)")
        self.datasets = datasets
        self.entries: list[PoolEntry] = []
        for dataset in datasets:
            table = remap.get(dataset.name, {value: value for value in dataset.classes})
            for source, target in table.items():
                if source not in dataset.classes:
                    raise DatasetError(f"remap of {dataset.name!r}: source label {source} is not one of its "
                                       f"labels {sorted(dataset.classes)}")
                if target != 0 and target not in self.classes:
                    raise DatasetError(f"remap of {dataset.name!r}: target {target} is not a pool class "
                                       f"{sorted(self.classes)}")
            lookup = np.zeros(max(dataset.classes, default=0) + 1, dtype=np.uint16)
            for source, target in table.items():
                lookup[source] = target
            annotated = frozenset(t for t in table.values() if t != 0)
            self.entries.extend(PoolEntry(case, lookup, annotated) for case in dataset.cases)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.entries)

    def sampling_weights(self) -> np.ndarray:
        """Per-case probabilities, proportional to 1/sqrt(size of the case's dataset), summing to 1."""
        sizes = {d.name: len(d.cases) for d in self.datasets}
        weights = np.array([1.0 / np.sqrt(sizes[e.case.dataset]) for e in self.entries])
        return weights / weights.sum()

    def remap_labels(self, index: int, labels: np.ndarray) -> np.ndarray:
        """The case's label map (any integer array) in shared class ids; unknown source values are an error."""
        lookup = self.entries[index].lookup
        if labels.size and (int(labels.max()) >= len(lookup) or int(labels.min()) < 0):
            case = self.entries[index].case
            raise DatasetError(f"case {case.case_id!r} of {case.dataset!r}: label values "
                               f"[{int(labels.min())}, {int(labels.max())}] exceed its dataset's labels "
                               f"{len(lookup) - 1}")
        return lookup[labels.astype(np.int64)]

    def annotated_vector(self, index: int) -> np.ndarray:
        """(C,) bool: entry c-1 is True when the case annotates shared class c."""
        vector = np.zeros(self.num_classes, dtype=bool)
        for c in self.entries[index].annotated:
            vector[c - 1] = True
        return vector


    def mask_lookup(self, index: int) -> np.ndarray:
        """For a case with per-class masks: mask channel number (1..M) -> pool class (0: not trained on)."""
        entry = self.entries[index]
        values = sorted(next(d for d in self.datasets if d.name == entry.case.dataset).classes)
        lookup = np.zeros(len(values) + 1, dtype=np.uint16)
        for channel, value in enumerate(values, start=1):
            lookup[channel] = entry.lookup[value] if value < len(entry.lookup) else 0
        return lookup


def _source_value(dataset: Dataset, source: int | str) -> int:
    """A remap source: a label value, or a label name of ``dataset``."""
    if isinstance(source, str) and not source.strip().lstrip("-").isdigit():
        matches = [value for value, name in dataset.classes.items() if name == source]
        if not matches:
            raise DatasetError(f"remap of {dataset.name!r}: it has no label named {source!r} "
                               f"(its labels: {dataset.classes})")
        return matches[0]
    return int(source)


def pool_from_config(datasets: list[Dataset], settings: dict[str, Any]) -> DatasetPool:
    """``{classes: {1: name, ...}, remap: {dataset: {source: target}}}``.

    Without ``classes``, every (dataset, class) pair is its own pool class, named ``<dataset>: <class>``.
    """
    classes = settings.get("classes")
    if classes is None:
        keys = [(d.name, value, name) for d in datasets for value, name in sorted(d.classes.items())]
        classes = {i + 1: f"{dataset}: {name}" for i, (dataset, _, name) in enumerate(keys)}
        remap: dict[str, dict[int | str, int]] = {d.name: {} for d in datasets}
        for i, (dataset, value, _) in enumerate(keys):
            remap[dataset][value] = i + 1
    else:
        remap = settings.get("remap", {})
    return DatasetPool(datasets, classes, remap)
