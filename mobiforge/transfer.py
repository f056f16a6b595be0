"""Transfer learning that fits a CPU budget: the frozen part of a network runs once per image and view, and only
its tail trains, on the cached activations (``train --trainable-blocks N``).

Where the network is cut: ``trainable_blocks=0`` trains the classifier alone (a linear probe on the pooled
features); ``N >= 1`` trains the last N entries of ``features`` (the head conv counts as one), their BatchNorm
included, and the classifier. The trunk before the cut is the expensive part of transfer; it runs once per (image,
view), in inference mode and channels_last, and its output is kept in fp16: ``views`` per training image (the
first the plain eval crop, the others the training augmentation, seeded per image and view) and one per val
image. Each epoch then costs only the tail's steps.

The activations are written in chunks to ``RUN/cache/`` under a key that hashes the trunk's weights, the cut, the
preprocessing and augmentation, the views and the files (paths, sizes, modification times): a killed run resumes
from the chunks it finished, and a cache of other weights, another resolution or other data is never read (its key
differs; a chunk whose stored key does not match is recomputed, with a warning).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from mobiforge import engine
from mobiforge.checkpoint import model_checkpoint, save_checkpoint
from mobiforge.config import TrainConfig
from mobiforge.data import DataConfig, ImageSamples, Sample, check_images, discover, eval_transform, memory_budget
from mobiforge.data import train_transform as augmentation
from mobiforge.errors import MobiforgeError
from mobiforge.log import logger
from mobiforge.models.base import MobileClassifier, Preprocess, StackedNet
from mobiforge.progress import Reporter, SilentReporter
from mobiforge.runs import (
    TrainResult,
    finish_plots,
    prepare_run_dir,
    starting_point,
    write_config,
    write_metrics_csv,
)
from mobiforge.units import format_bytes

CACHE_VERSION = 1
CHUNK_IMAGES = 128  # images per cache file: what a killed run recomputes at most, per view
EXTRACT_BATCH = 32


# ---------------------------------------------------------------------------------------------------- the cut


def cut_index(model: nn.Module, trainable_blocks: int) -> int | None:
    """The index into ``model.features`` where the trainable tail starts (None: the classifier alone)."""
    name = (getattr(model, "spec", None) or {}).get("name", type(model).__name__)
    if not isinstance(model, MobileClassifier):
        raise MobiforgeError(f"--trainable-blocks: {name} is not a mobiforge classifier")
    if trainable_blocks == 0:
        return None
    if not isinstance(model, StackedNet):
        raise MobiforgeError(
            f"--trainable-blocks {trainable_blocks}: {name} has no block sequence to cut; use --trainable-blocks 0 "
            "(the classifier alone)"
        )
    blocks = len(model.features)
    if not 1 <= trainable_blocks < blocks:
        raise MobiforgeError(
            f"--trainable-blocks must be between 0 and {blocks - 1} for {name}, got {trainable_blocks}"
        )
    return blocks - trainable_blocks


class Tail(nn.Module):
    """The trainable end of a network: ``features[cut:]``, pooling and the classifier; with ``cut=None`` the
    classifier alone, on pooled features. It shares its modules with the full model, which they update."""

    def __init__(self, model: MobileClassifier, cut: int | None) -> None:
        super().__init__()
        self.blocks = model.features[cut:] if cut is not None else nn.Sequential()
        self.classifier = model.get_classifier()
        self.pooled_input = cut is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pooled_input:
            x = torch.flatten(F.adaptive_avg_pool2d(self.blocks(x), 1), 1)
        return self.classifier(x)


def trunk_output(model: MobileClassifier, cut: int | None, images: torch.Tensor) -> torch.Tensor:
    """What the tail trains on: ``features[:cut]``'s output, or the pooled features."""
    if cut is None:
        return torch.flatten(F.adaptive_avg_pool2d(model.forward_features(images), 1), 1)
    return model.features[:cut](images)


def trunk_state(model: MobileClassifier, cut: int | None) -> dict[str, torch.Tensor]:
    if cut is None:
        classifier = {f"{model.classifier_attr}.{key}" for key in model.get_classifier().state_dict()}
        return {key: value for key, value in model.state_dict().items() if key not in classifier}
    return model.features[:cut].state_dict()


# ------------------------------------------------------------------------------------------------------ cache


@dataclass
class CachePlan:
    """What is cached: the key that names it, the transform of each view, the bytes it takes, and the digest of
    the trunk's weights (hashed once, shared by the train and val caches)."""

    key: str
    transforms: list[Callable[[Any], Any]]
    item_shape: tuple[int, ...]
    images: int
    trunk: str = ""

    @property
    def bytes(self) -> int:
        per_item = 2 * int(torch.tensor(self.item_shape).prod()) if self.item_shape else 2
        return per_item * self.images * len(self.transforms)


def trunk_digest(model: MobileClassifier, cut: int | None) -> str:
    """A hash of the frozen trunk's weights and buffers."""
    digest = hashlib.sha256()
    for name, tensor in sorted(trunk_state(model, cut).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(
    trunk: str,
    spec: dict[str, Any] | None,
    cut: int | None,
    preprocess: Preprocess,
    data: DataConfig,
    views: int,
    seed: int,
    samples: list[Sample],
) -> str:
    """A hash of everything the cached activations depend on (``trunk``: ``trunk_digest`` of the weights)."""
    digest = hashlib.sha256()
    recipe = {"version": CACHE_VERSION, "spec": spec, "cut": cut, "preprocess": preprocess.to_dict(), "trunk": trunk}
    if views > 1:  # the augmentation only matters where augmented views are cached
        recipe.update(views=views, seed=seed, augmentation=_augmentation_settings(data))
    digest.update(json.dumps(recipe, sort_keys=True, default=str).encode())
    for path, label in samples:
        stat = os.stat(path)
        digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def eval_plan(
    train_plan: CachePlan, spec: dict[str, Any] | None, cut: int | None, preprocess: Preprocess, samples: list[Sample]
) -> CachePlan:
    """The val cache: one plain eval crop per image, the same trunk."""
    key = cache_key(train_plan.trunk, spec, cut, preprocess, DataConfig(), 1, 0, samples)
    return CachePlan(key, [eval_transform(preprocess)], train_plan.item_shape, len(samples), train_plan.trunk)


def _augmentation_settings(data: DataConfig) -> dict[str, Any]:
    fields = ("img_size", "hflip", "crop", "min_scale", "trivial_augment", "random_erasing", "mean", "std")
    return {name: getattr(data, name) for name in fields}


def cached_activations(
    model: MobileClassifier,
    cut: int | None,
    samples: list[Sample],
    plan: CachePlan,
    folder: Path,
    split: str,
    seed: int,
    reporter: Reporter,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The trunk's fp16 outputs for every (view, image) of ``samples`` and their labels, view after view; read
    from ``folder`` where a chunk with this key exists, computed (and written) where not."""
    folder.mkdir(parents=True, exist_ok=True)
    outputs, labels = [], []
    computed = 0
    for view, transform in enumerate(plan.transforms):
        dataset = ImageSamples(samples, transform, seed=seed)
        dataset.set_epoch(view)
        for start in range(0, len(samples), CHUNK_IMAGES):
            path = folder / f"{split}-{plan.key[:24]}-v{view}-{start // CHUNK_IMAGES:05d}.pt"
            chunk = _read_chunk(path, plan.key)
            if chunk is None:
                indices = range(start, min(start + CHUNK_IMAGES, len(samples)))
                chunk = _compute_chunk(model, cut, Subset(dataset, list(indices)))
                save_checkpoint({"key": plan.key, **chunk}, path)
                computed += len(indices)
            outputs.append(chunk["features"])
            labels.append(chunk["labels"])
    reused = len(samples) * len(plan.transforms) - computed
    reporter.message(
        f"{split} cache: {computed} trunk passes computed, {reused} read back ({plan.bytes / 2**20:.1f} MiB, fp16)"
    )
    return torch.cat(outputs), torch.cat(labels)


def _read_chunk(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    if not path.exists():
        return None
    try:
        chunk = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a chunk cut short by a crash, or damaged: compute it again
        warnings.warn(f"{path}: unreadable cache chunk ({type(error).__name__}); computing it again", stacklevel=3)
        return None
    if not isinstance(chunk, dict) or chunk.get("key") != key:
        warnings.warn(f"{path} was cached for other weights, data or settings; computing it again", stacklevel=3)
        return None
    return chunk


@torch.inference_mode()
def _compute_chunk(model: MobileClassifier, cut: int | None, dataset: Subset) -> dict[str, torch.Tensor]:
    features, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=EXTRACT_BATCH):
        images = images.contiguous(memory_format=torch.channels_last)
        features.append(trunk_output(model, cut, images).to(torch.float16).contiguous())
        labels.append(targets)
    return {"features": torch.cat(features), "labels": torch.cat(labels)}


def plan_cache(
    model: MobileClassifier,
    cut: int | None,
    preprocess: Preprocess,
    data: DataConfig,
    views: int,
    seed: int,
    samples: list[Sample],
    folder: Path,
    val_images: int,
) -> CachePlan:
    """The training cache's plan, with as many views as fit in memory and on disk (fewer with a warning; a
    one-line error naming the size when not even one does)."""
    with torch.inference_mode():
        example = torch.zeros(1, 3, preprocess.img_size, preprocess.img_size)
        item_shape = tuple(trunk_output(model, cut, example).shape[1:])
    transforms = [eval_transform(preprocess), *[augmentation(data)] * (views - 1)]
    per_view = CachePlan("", [eval_transform(preprocess)], item_shape, len(samples) + val_images).bytes
    folder.mkdir(parents=True, exist_ok=True)
    room = min(memory_budget(), shutil.disk_usage(folder).free // 2)
    fitting = min(views, room // max(per_view, 1))
    if fitting < 1:
        raise MobiforgeError(
            f"the feature cache needs {format_bytes(per_view)} for one view of {len(samples)} images "
            f"(trunk output {list(item_shape)} in fp16) and {format_bytes(room)} is free in memory and on disk at "
            f"{folder}; train more blocks (a smaller output) or fewer images"
        )
    if fitting < views:
        warnings.warn(f"the feature cache holds {fitting} of the {views} views asked for (memory)", stacklevel=2)
        transforms = transforms[:fitting]
    trunk = trunk_digest(model, cut)
    key = cache_key(trunk, model.spec, cut, preprocess, data, len(transforms), seed, samples)
    return CachePlan(key, transforms, item_shape, len(samples), trunk)


# ---------------------------------------------------------------------------------------------------- training


def _check(config: TrainConfig) -> None:
    if config.trainable_blocks is None or config.trainable_blocks < 0:
        raise MobiforgeError(f"--trainable-blocks must be 0 or more, got {config.trainable_blocks}")
    if config.views < 1:
        raise MobiforgeError(f"--views must be at least 1, got {config.views}")
    unsupported = [
        (config.resume, "--resume (a cached run retrains its tail in seconds: run the same command again)"),
        (config.distill, "a teacher (distillation) with --trainable-blocks"),
        (int(os.environ.get("WORLD_SIZE", "1")) > 1, "torchrun with --trainable-blocks"),
        (config.freeze_epochs, "--freeze-epochs with --trainable-blocks (the trunk is frozen already)"),
    ]
    for given, what in unsupported:
        if given:
            raise MobiforgeError(f"{what} is not supported")


def fit_tail(config: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Train the tail of ``config.model`` on cached trunk outputs (see the module docstring); the run directory
    and its checkpoints are a normal run's, holding the whole network."""
    reporter = reporter or SilentReporter()
    _check(config)
    config = dataclasses.replace(config, epochs=config.epochs or 30)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    splits = discover(config.data)
    start = starting_point(config, splits.classes)
    config, model, preprocess = start.config, start.model.eval(), start.preprocess
    cut = cut_index(model, config.trainable_blocks or 0)
    splits = check_images(splits, config.data.skip_bad_images)
    run_dir = prepare_run_dir(config, None)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, config)
    model.to(memory_format=torch.channels_last)
    folder = run_dir / "cache"
    plan = plan_cache(model, cut, preprocess, config.data, config.views, config.seed, splits.train, folder, len(
        splits.val))  # fmt: skip
    started = time.time()
    train_x, train_y = cached_activations(model, cut, splits.train, plan, folder, "train", config.seed, reporter)
    val_plan = eval_plan(plan, model.spec, cut, preprocess, splits.val)
    val_x, val_y = cached_activations(model, cut, splits.val, val_plan, folder, "val", 0, reporter)
    logger.debug("feature cache ready in %.1f s: train %s, val %s", time.time() - started, train_x.shape, val_x.shape)

    tail = Tail(model, cut)
    result = _train_tail(config, tail, (train_x, train_y), (val_x, val_y), model, splits.classes, run_dir, reporter)
    finish_plots(run_dir, result.history, splits.classes)
    return result


def _train_tail(
    config: TrainConfig,
    tail: Tail,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    model: nn.Module,
    classes: list[str],
    run_dir: Path,
    reporter: Reporter,
) -> TrainResult:
    """The train loop's own functions on cached tensors; each epoch's checkpoint holds the whole network."""
    generator = torch.Generator().manual_seed(config.seed)
    batch = config.data.batch_size
    train_loader = DataLoader(
        TensorDataset(*train), batch_size=batch, shuffle=True, generator=generator, drop_last=len(train[0]) > batch
    )
    val_loader = DataLoader(TensorDataset(*val), batch_size=256)
    optimizer = engine.build_optimizer(tail, config.optim)
    scheduler = engine.build_scheduler(optimizer, config.optim, config.epochs or 1, len(train_loader))
    loss_fn = engine.cross_entropy_loss(config.optim.label_smoothing)
    history: list[dict[str, Any]] = []
    best = -1.0
    reporter.start(
        {"run_dir": str(run_dir), "model": config.model, "params": sum(p.numel() for p in tail.parameters()),
         "classes": len(classes), "train_images": len(train[0]), "val_images": len(val[0]), "data": "feature cache",
         "device": "cpu", "world_size": 1, "img_size": config.data.img_size, "epochs": config.epochs, "start_epoch": 0,
         "threads": torch.get_num_threads(), "amp": "none"}
    )  # fmt: skip
    for epoch in range(config.epochs or 1):
        stats = engine.train_one_epoch(
            tail, _Float(train_loader), optimizer, scheduler, loss_fn, epoch=epoch, clip_grad=config.optim.clip_grad,
            channels_last=False, progress=reporter.step,
        )  # fmt: skip
        evaluated = engine.evaluate(tail, _Float(val_loader), len(classes), channels_last=False)
        row = {
            "epoch": epoch + 1,
            "train_loss": stats.loss,
            "val_loss": evaluated.loss,
            "val_top1": evaluated.top1,
            "val_top5": evaluated.top5,
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": stats.seconds,
            "images_per_second": stats.images_per_second,
        }
        history.append(row)
        model.eval()
        state = model_checkpoint(
            model,
            classes=classes,
            preprocess=model.preprocess,
            epoch=epoch + 1,
            metrics={"history": history, "best_top1": max(best, evaluated.top1), "val": evaluated.to_dict(classes)},
            config=config.to_dict(),
            transfer={"trainable_blocks": config.trainable_blocks, "views": config.views},
        )
        save_checkpoint(state, run_dir / "last.pt")
        if evaluated.top1 > best:
            best = evaluated.top1
            shutil.copyfile(run_dir / "last.pt", run_dir / ".best.pt.tmp")
            os.replace(run_dir / ".best.pt.tmp", run_dir / "best.pt")
        write_metrics_csv(run_dir, history)
        reporter.epoch({**row, "best_top1": best, "epochs": config.epochs})
    return TrainResult(run_dir, best, history)


class _Float:
    """Batches of the fp16 cache as float32 (the tail trains and is evaluated in fp32)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        return ((features.float(), labels) for features, labels in self.loader)
