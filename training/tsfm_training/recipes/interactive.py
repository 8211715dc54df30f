"""Recipe ``interactive``: train a click-conditioned U-Net on real tumour masks and export it with its card.

Data: cases ``<root>/<CASE>/{ct.nii.gz, mask.nii.gz}`` (the soft-tissue sarcoma set), resampled once to
the model spacing and normalised as the card says. A fixed list of cases is held out for validation.
Each training sample is a crop around a random tumour voxel (jittered so the tumour is often cut by the
crop border) with simulated prompts (``objectives.click_simulation``). With
``simulation.iterative_probability`` > 0, that share of the samples first lets the network play one to
three rounds itself (without gradient): its prediction becomes the previous mask and the next click goes
into its largest error region, as in iterative DeepEdit / nnInteractive training; the gradient step is
taken on the last round. The loss is BCE + soft Dice on the single
sigmoid channel. After ``tsfm_training.loop.fit`` the network is exported into the backend's
model format, then evaluated on the held-out cases with the same deterministic click protocol as the
benchmark, and the metrics are written into the card.

Config sections: ``data`` (root, validation_cases, optional training_cases (default: every other case),
spacing, normalization, crop_sizes, batch_sizes),
``model`` (id, architecture, description), ``init`` (optional ``checkpoint``: a model id or folder of the
same architecture whose weights the run starts from; the card's ``provenance.training.stages`` then lists
that model's stages before this run's), ``simulation`` (``SimulationConfig`` fields), ``augmentation``
(optional ``ClickAugmentation`` fields: rotation, zoom, gamma, noise), ``loop`` (``LoopConfig``),
``export`` (directory), ``evaluation`` (clicks), ``threads``.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tsfm_backend.checkpoints import LoadedModel, save_model
from tsfm_backend.model_card import ModelCard
from tsfm_backend.models import build_network
from tsfm_backend.models.click_unet import encode_prompts

from tsfm_training.config import locate_shared_data
from tsfm_training.data.click_augmentation import (
    ClickAugmentation,
    adjust_intensity,
    random_voxel_transform,
    transformed_crop,
)
from tsfm_training.data.click_objects import (
    KINDS,
    ObjectVolume,
    TrainingObject,
    list_objects,
    random_object_voxel,
    sts_volumes,
    to_model_grid,
    totalseg_volumes,
    with_pseudo_objects,
)
from tsfm_training.data.heldout_objects import HeldoutObject, heldout_objects
from tsfm_training.distributed import refuse_torchrun
from tsfm_training.loop import LoopConfig, fit
from tsfm_training.objectives.click_simulation import (
    SimulationConfig,
    error_click,
    simulate_prompts,
    simulation_rounds,
)

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]


def data_root(configured: str) -> Path:
    """The data folder, with ``../shared/data/...`` located as ``tsfm_training.config.locate_shared_data`` does."""
    path = Path(locate_shared_data(configured))
    if not path.is_dir():
        raise ValueError(f"data folder {configured!r} not found (looked for {path})")
    return path


def split_cases(names: list[str], validation: list[str], training: list[str] | None,
                root: Path) -> tuple[list[str], list[str]]:
    """(training, validation) case names among ``names``: the validation cases as listed, and for
    training the listed ``training`` cases, or every other case when ``training`` is None.

    Raises ValueError naming cases that are not under ``root`` or that are listed for both.
    """
    missing = sorted(set(validation) - set(names))
    if missing:
        raise ValueError(f"validation cases {missing} are not under {root}")
    if training is None:
        return [n for n in names if n not in validation], list(validation)
    if isinstance(training, str):
        raise ValueError(f"data.training_cases must be a list of case names, got the string {training!r}")
    if not training:
        raise ValueError("data.training_cases is empty; list at least one case, or leave it out to train "
                         "on every case that is not held out")
    missing = sorted(set(training) - set(names))
    if missing:
        raise ValueError(f"training cases {missing} are not under {root}")
    both = sorted(set(training) & set(validation))
    if both:
        raise ValueError(f"cases {both} are listed for both training and validation")
    return sorted(set(training)), list(validation)


def load_case(folder: Path, spacing: tuple[float, float, float], normalization: dict) -> ObjectVolume:
    """The CT and tumour mask of one sarcoma case on the model grid (object label 1)."""
    image, labels, modality = to_model_grid(folder / "ct.nii.gz", folder / "mask.nii.gz", spacing, normalization,
                                            "CT")
    return ObjectVolume(f"{folder.name}/ct", folder.name, modality, "tumour", image,
                        (labels > 0).astype(np.uint16), {1: "tumour"})


def load_volumes(data: dict[str, Any], root: Path, patients: list[str], spacing: tuple[float, float, float],
                 seed: int) -> list[ObjectVolume]:
    """Every training volume the ``data`` section names: the patients' sarcoma images in
    ``data.modalities`` (default ``[ct]``), TotalSegmentator's example CTs without the
    ``data.totalseg.heldout_classes``, and ``data.pseudo_objects.per_volume`` pseudo-objects of each."""
    normalization = data["normalization"]
    volumes = sts_volumes(root, patients, list(data.get("modalities") or ["ct"]), spacing, normalization)
    excluded: dict[str, np.ndarray] = {}
    totalseg = data.get("totalseg")
    if totalseg:
        organs, masks = totalseg_volumes(Path(locate_shared_data(str(totalseg["root"]))),
                                         list(totalseg.get("heldout_classes") or []), spacing, normalization)
        volumes += organs
        excluded = {volume.name: mask for volume, mask in zip(organs, masks, strict=True)}
    pseudo = data.get("pseudo_objects")
    if pseudo:
        volumes += with_pseudo_objects(volumes, excluded, int(pseudo.get("per_volume", 20)), seed)
    return volumes


def crop_with_padding(array: np.ndarray, start: np.ndarray, size: tuple[int, int, int], fill: float) -> np.ndarray:
    """``array[start:start+size]`` per axis, padded with ``fill`` where the window leaves the array."""
    out = np.full(size, fill, dtype=array.dtype)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + np.array(size), array.shape)
    if np.any(src_hi <= src_lo):
        return out
    dst_lo = src_lo - start
    dst_hi = dst_lo + (src_hi - src_lo)
    out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi, strict=True))] = \
        array[tuple(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True))]
    return out


class ClickBatches:
    """Endless batches ``{"image": (B, 1+4, Z, Y, X), "label": (B, 1, Z, Y, X), "rounds": (B,)}``.

    ``image`` holds the crop and its simulated prompts; ``rounds`` says how many rounds the network plays
    itself on that sample before the trained one (``SelfCorrectingLoss``); such samples start as a first
    interaction.

    Each sample draws an object kind by ``kind_weights`` (among the kinds present), then one object of
    that kind uniformly, and crops around a random voxel of it. The crop size (and its batch size) is
    drawn per batch from ``crop_sizes``, so the network sees both the small crops of fast training and
    the full interactive crop. Its random state is saved with the training checkpoint, so a resumed run
    draws the same batches.
    """

    def __init__(self, volumes: list[ObjectVolume], spacing: tuple[float, float, float], click_radius_mm: float,
                 crop_sizes: list[tuple[int, int, int]], batch_sizes: list[int],
                 simulation: SimulationConfig, seed: int,
                 augmentation: ClickAugmentation | None = None,
                 kind_weights: dict[str, float] | None = None) -> None:
        self.volumes = volumes
        self.spacing = spacing
        self.click_radius_mm = click_radius_mm
        self.crop_sizes = crop_sizes
        self.batch_sizes = batch_sizes
        self.simulation = simulation
        self.augmentation = augmentation or ClickAugmentation()
        self.rng = np.random.default_rng(seed)
        objects = list_objects(volumes)
        self.by_kind = {kind: found for kind in KINDS if (found := [o for o in objects if o.kind == kind])}
        if not self.by_kind:
            raise ValueError("no objects to train on: every volume's labels are empty")
        weights = {kind: float((kind_weights or {}).get(kind, 1.0)) for kind in self.by_kind}
        unknown = sorted(set(kind_weights or {}) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown object kinds {unknown} in data.kind_weights; use {list(KINDS)}")
        total = sum(weights.values())
        if total <= 0:
            raise ValueError(f"data.kind_weights gives no weight to the kinds present: {sorted(self.by_kind)}")
        self.kinds = list(self.by_kind)
        self.kind_probabilities = np.array([weights[k] / total for k in self.kinds])
        self.fill = [float(volume.image.min()) for volume in volumes]

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    def __iter__(self) -> ClickBatches:
        return self

    def draw_object(self) -> TrainingObject:
        """One object: a kind by its weight, then an object of that kind uniformly."""
        kind = self.kinds[0] if len(self.kinds) == 1 else \
            self.kinds[int(self.rng.choice(len(self.kinds), p=self.kind_probabilities))]
        found = self.by_kind[kind]
        return found[int(self.rng.integers(len(found)))]

    def sample(self, size: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One (5, *size) input, its (1, *size) target and its number of self-played rounds."""
        obj = self.draw_object()
        volume = self.volumes[obj.volume]
        centre = random_object_voxel(volume, obj, self.rng)
        jitter = np.array([self.rng.integers(-(s // 4), s // 4 + 1) for s in size])
        middle = centre + jitter
        start = middle - np.array(size) // 2
        fill = self.fill[obj.volume]
        mask = volume.labels == obj.label
        transform = random_voxel_transform(self.rng, self.spacing, self.augmentation)
        if transform is None:
            image = crop_with_padding(volume.image, start, size, fill=fill)
            target = crop_with_padding(mask, start, size, fill=False)
        else:
            image = transformed_crop(volume.image, middle, size, transform, fill)
            target = transformed_crop(mask, middle, size, transform, 0.0)
        if not np.any(target):  # a thin object rotated out of the crop: take it without the transform
            image = crop_with_padding(volume.image, start, size, fill=fill)
            target = crop_with_padding(mask, start, size, fill=False)
        for axis in range(3):
            if self.rng.random() < 0.5:
                image, target = np.flip(image, axis), np.flip(target, axis)
        image = image * self.rng.uniform(0.9, 1.1) + self.rng.uniform(-0.05, 0.05)
        image = adjust_intensity(image, self.rng, self.augmentation)
        rounds = simulation_rounds(self.rng, self.simulation)
        simulation = replace(self.simulation, correction_probability=0.0) if rounds else self.simulation
        prompts = simulate_prompts(np.ascontiguousarray(target), self.spacing, self.rng, simulation)
        channels = encode_prompts(
            size, self.spacing, self.click_radius_mm,
            positive=torch.from_numpy(prompts.positive).float(),
            negative=torch.from_numpy(prompts.negative).float(),
            boxes=torch.from_numpy(prompts.boxes).float(),
            previous=torch.from_numpy(prompts.previous).float(),
        )
        inputs = torch.cat([torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None], channels])
        return inputs, torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))[None], rounds

    def __next__(self) -> dict[str, torch.Tensor]:
        choice = int(self.rng.integers(len(self.crop_sizes)))
        size = tuple(int(s) for s in self.crop_sizes[choice])
        samples = [self.sample(size) for _ in range(int(self.batch_sizes[choice]))]
        return {"image": torch.stack([s[0] for s in samples]), "label": torch.stack([s[1] for s in samples]),
                "rounds": torch.tensor([s[2] for s in samples], dtype=torch.long)}


def self_play(model: torch.nn.Module, image: torch.Tensor, label: torch.Tensor, rounds: torch.Tensor,
              spacing: tuple[float, float, float], click_radius_mm: float,
              rng: np.random.Generator) -> torch.Tensor:
    """The inputs after the network's own rounds: (B, 1+4, Z, Y, X), a new tensor.

    For each sample with ``rounds[b] = r > 0`` the network predicts r times without gradient; after each
    prediction the next click goes into its largest error region (positive where it missed, negative
    where it over-segmented) and the prediction becomes the previous-mask channel. Samples whose
    prediction is already perfect keep their last inputs.
    """
    image = image.clone()
    channels = {"positive": -4, "negative": -3, "previous": -1}
    shape = tuple(int(n) for n in image.shape[2:])
    for current in range(int(rounds.max()) if rounds.numel() else 0):
        active = torch.nonzero(rounds > current).flatten()
        with torch.no_grad():
            predicted = (model(image[active]).float()[:, 0] > 0).cpu().numpy()
        for row, index in enumerate(active.tolist()):
            target = label[index, 0].cpu().numpy() > 0.5
            click = error_click(predicted[row], target, spacing, rng)
            if click is None:
                continue
            point, positive = click
            ball = encode_prompts(shape, spacing, click_radius_mm,
                                  positive=torch.tensor([point], dtype=torch.float32))[0].to(image.device)
            channel = channels["positive" if positive else "negative"]
            image[index, channel] = torch.maximum(image[index, channel], ball)
            image[index, channels["previous"]] = torch.from_numpy(predicted[row]).to(image)
    return image


class SelfCorrectingLoss:
    """``loss_fn`` for ``fit``: plays the batch's self-rounds (``self_play``), then BCE + soft Dice."""

    def __init__(self, spacing: tuple[float, float, float], click_radius_mm: float, seed: int) -> None:
        self.spacing = spacing
        self.click_radius_mm = click_radius_mm
        self.rng = np.random.default_rng(seed + 1)

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rounds = batch.get("rounds")
        if rounds is not None and bool((rounds > 0).any()):
            batch = dict(batch, image=self_play(model, batch["image"], batch["label"], rounds, self.spacing,
                                                self.click_radius_mm, self.rng))
        return bce_dice_loss(model, batch)


def bce_dice_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice of the single logit channel against the (B, 1, ...) target."""
    logits = model(batch["image"]).float()
    target = batch["label"]
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probability = torch.sigmoid(logits)
    intersection = (probability * target).sum()
    soft_dice = (2 * intersection + 1.0) / (probability.sum() + target.sum() + 1.0)
    return bce + (1.0 - soft_dice)


def git_commit() -> str:
    """The repository commit the run started from ('unknown' outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build_card(config: dict[str, Any], train: list[str], validation: list[str], root: Path) -> ModelCard:
    data, model = config["data"], config["model"]
    return ModelCard(
        id=model["id"], family="click_unet", architecture=dict(model["architecture"]), kind="promptable",
        classes={1: "object"}, in_channels=1, spacing=tuple(data["spacing"]), axis_order="kji",
        normalization=dict(data["normalization"]), patch_size=tuple(model["crop_size"]), output="sigmoid",
        license=model.get("license", "CC-BY-3.0"), description=model.get("description", ""),
        local_corrections=bool(model.get("local_corrections", False)),
        first_mask_logit=float(model.get("first_mask_logit", 0.0)),
        provenance={
            "data": {"root": str(root), "training_cases": train, "validation_cases": validation,
                     "attribution": model.get("attribution", "")},
            "config": config, "commit": git_commit(), "command": model.get("command", ""),
        },
    )


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Train, export and evaluate; returns the loop summary, the export folder and the validation metrics."""
    refuse_torchrun("interactive", "its click simulation and self-play draw from one process's generators "
                    "and it exports and evaluates in the same process")
    torch.set_num_threads(int(config.get("threads", 1)))
    data = config["data"]
    root = data_root(str(data["root"]))
    spacing = tuple(float(s) for s in data["spacing"])
    names = sorted(p.name for p in root.iterdir() if (p / "ct.nii.gz").is_file())
    if not names:
        raise ValueError(f"no cases with ct.nii.gz under {root}")
    train, validation = split_cases(names, data["validation_cases"], data.get("training_cases"), root)
    seed = int(config["loop"].get("seed", 0))
    started = time.perf_counter()
    volumes = load_volumes(data, root, train, spacing, seed)

    card = build_card(config, train, validation, root)
    card.provenance["data"]["volumes"] = sorted({v.name for v in volumes if v.kind != "pseudo"})
    torch.manual_seed(seed)  # before the network is built, so a rerun starts from the same weights
    network = build_network(card)
    init = config.get("init") or {}
    stages: list[dict[str, Any]] = []
    if init.get("checkpoint"):
        from tsfm_training.recipes.supervised import initialise

        stages = earlier_stages(str(init["checkpoint"]))  # read first: the export may overwrite that folder
        _, card.provenance["init"] = initialise(network, card, init)
    click_radius_mm = float(card.architecture.get("click_radius_mm", 5.0))
    batches = ClickBatches(
        volumes, spacing, click_radius_mm,
        [tuple(s) for s in data["crop_sizes"]], [int(b) for b in data["batch_sizes"]],
        SimulationConfig(**config.get("simulation", {})), seed=seed,
        augmentation=ClickAugmentation.from_dict(config.get("augmentation") or {}),
        kind_weights=data.get("kind_weights"),
    )
    counts = {kind: len(objects) for kind, objects in batches.by_kind.items()}
    card.provenance["data"]["objects"] = counts
    log.info("Loaded %d training volumes of %d patients in %.1f s, objects per kind %s (validation: %s)",
             len(volumes), len(train), time.perf_counter() - started, counts, ", ".join(validation))
    loop = LoopConfig.from_dict(dict(config["loop"]))
    summary = fit(network, batches, SelfCorrectingLoss(spacing, click_radius_mm, seed), loop, run_config=config)
    network = network.cpu().eval()

    export_dir = Path(config["export"]["directory"])
    card.provenance["training"] = {"steps": summary["step"], "final_loss": summary["loss"],
                                   "seconds": round(summary["seconds"], 1)}
    save_model(network, card, export_dir)
    evaluation = config.get("evaluation", {})
    metrics = evaluate(LoadedModel(network, card), heldout_objects(
        root.parent, validation, list(evaluation.get("modalities") or ["ct"]),
        list(evaluation.get("organ_classes") or [])), int(evaluation.get("clicks", 5)))
    card.provenance["metrics"] = metrics
    card.provenance["training"]["stages"] = [*stages, stage_record(card.provenance)]
    save_model(network, card, export_dir)
    log.info("Exported %s with validation metrics %s", export_dir, metrics["mean"])
    return {"loop": summary, "export": str(export_dir), "metrics": metrics}


def stage_record(provenance: dict[str, Any]) -> dict[str, Any]:
    """One training stage as the card's ``provenance.training.stages`` lists it.

    ``config`` names the bundled config the run's output folder is named after (each bundled interactive
    config writes to ``out/runs/<its name>``), where there is one.
    """
    training = provenance.get("training") or {}
    output_dir = (provenance.get("config") or {}).get("loop", {}).get("output_dir")
    record: dict[str, Any] = {"output_dir": output_dir}
    if output_dir and (REPO / "training" / "configs" / f"{Path(output_dir).name}.yaml").is_file():
        record["config"] = f"training/configs/{Path(output_dir).name}.yaml"
    return {**record, "steps": training.get("steps"), "seconds": training.get("seconds"),
            "commit": provenance.get("commit"), "metrics_mean": (provenance.get("metrics") or {}).get("mean")}


def earlier_stages(checkpoint: str) -> list[dict[str, Any]]:
    """The training stages behind the model a run starts from, oldest first: the ones its card lists, else
    that model's own run as one stage (none for a model that records no training, such as an official
    checkpoint). Reads the card only; the weights are read once, by the initialisation."""
    from tsfm_backend.formats import ours
    from tsfm_backend.store import resolve_model

    path = resolve_model(checkpoint)
    if not ours.detect(path):
        return []
    card = ModelCard.read((path.parent if path.is_file() else path) / ours.CARD_FILE)
    training = card.provenance.get("training") or {}
    if "stages" in training:
        return list(training["stages"])
    return [stage_record(card.provenance)] if training else []


def evaluate(loaded: LoadedModel, objects: list[HeldoutObject], clicks: int) -> dict[str, Any]:
    """Dice after each click of the deterministic protocol, per held-out object, per group and overall.

    ``mean`` is over the sarcoma CT group (the figure earlier cards reported); ``groups`` holds each
    group's mean and ``overall`` the mean over groups. ``worse_clicks`` is the share of clicks after the
    first that lowered Dice by more than 0.005.
    """
    from tsfm_backend.inference.click_policy import run_protocol
    from tsfm_backend.inference.interactive import Interaction, InteractiveSession

    per_object: dict[str, Any] = {}
    groups: dict[str, list[str]] = {}
    for obj in objects:
        session = InteractiveSession(loaded, obj.volume, modality=obj.modality)

        def segment(click, session=session):
            session.interact(Interaction("point", click.positive, point=click.point))
            return session.mask(1)

        trace = run_protocol(segment, obj.reference, obj.volume.spacing_kji, clicks)
        key = obj.name.removesuffix("/ct") if obj.group == "sarcoma CT" else obj.name
        per_object[key] = {"group": obj.group, "dice": [round(t.dice, 4) for t in trace],
                           "seconds": [round(t.seconds, 3) for t in trace]}
        groups.setdefault(obj.group, []).append(key)
    checkpoints = sorted({1, min(3, clicks), clicks})

    def means(keys: list[str]) -> dict[str, float]:
        return {f"dice_{k}": round(float(np.mean([per_object[n]["dice"][k - 1] for n in keys])), 4)
                for k in checkpoints}

    group_means = {group: means(keys) for group, keys in groups.items()}
    steps = [(d[i - 1], d[i]) for c in per_object.values() for d in [c["dice"]] for i in range(1, len(d))]
    worse = sum(after < before - 0.005 for before, after in steps)
    return {"protocol": "first click at the deepest voxel, then the deepest voxel of the largest error region",
            "clicks": clicks, "mean": group_means.get("sarcoma CT", next(iter(group_means.values()))),
            "groups": group_means,
            "overall": {k: round(float(np.mean([g[k] for g in group_means.values()])), 4)
                        for k in next(iter(group_means.values()))},
            "worse_clicks": {"count": int(worse), "of": len(steps)},
            "cases": per_object}
