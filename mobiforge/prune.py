"""Structured channel pruning with torch-pruning, fine-tuned with the train command's own loop.

``prune(config)`` loads a checkpoint, measures it (parameters, MACs, batch-1 latency, val accuracy), removes whole
channels with torch-pruning's dependency graph (which keeps depthwise convs, residual adds and squeeze-excite
consistent), writes the result as a plain checkpoint whose spec carries the new widths, fine-tunes it with
``mobiforge.train.train`` (optionally distilling from a teacher) and measures again.

Run directory ``runs/NAME/``: ``pruned.pt`` (before fine-tuning), the fine-tuning run's files (``best.pt``,
``last.pt``, ``metrics.csv``...) and ``prune_report.json`` with the before/after table.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobiforge.checkpoint import Checkpoint
from mobiforge.config import IMPORTANCES
from mobiforge.config import PruneConfig as PruneConfig  # public here too
from mobiforge.data import (
    DataConfig,
    ImageSamples,
    eval_transform,
    loader_workers,
    split_samples,
    train_transform,
)
from mobiforge.engine import recalibrate_bn
from mobiforge.errors import MobiforgeError
from mobiforge.files import write_atomic
from mobiforge.inference import evaluate_checkpoint
from mobiforge.models.base import Preprocess
from mobiforge.models.widths import check_prunable, respec
from mobiforge.profile import count_macs, count_params, measure_latency, num_threads
from mobiforge.progress import Reporter, SilentReporter
from mobiforge.runs import claim_run_dir
from mobiforge.train import TrainConfig, train


@dataclass
class ModelFigures:
    params: int
    macs: int
    latency_ms: float
    latency_p90_ms: float
    top1: float | None


@dataclass
class PruneResult:
    run_dir: Path
    before: ModelFigures
    pruned: ModelFigures
    after: ModelFigures | None
    checkpoint: Path
    spec: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["run_dir"], data["checkpoint"] = str(self.run_dir), str(self.checkpoint)
        return data


def _check(config: PruneConfig) -> None:
    targets = [value for value in (config.ratio, config.target_macs, config.target_params) if value is not None]
    if len(targets) != 1:
        raise MobiforgeError("give exactly one of --ratio, --target-macs or --target-params")
    if config.importance not in IMPORTANCES:
        raise MobiforgeError(f"--importance must be one of {', '.join(IMPORTANCES)}, got {config.importance!r}")
    if config.finetune_epochs < 0:
        raise MobiforgeError(f"--finetune-epochs must be 0 or more, got {config.finetune_epochs}")


def _importance(name: str) -> Any:
    import torch_pruning as tp

    if name == "taylor":
        return tp.importance.TaylorImportance()
    return tp.importance.BNScaleImportance() if name == "bn" else tp.importance.MagnitudeImportance(p=1)


def build_pruner(model: nn.Module, example: torch.Tensor, config: PruneConfig, ratio: float, steps: int) -> Any:
    """A torch-pruning MetaPruner that never touches the classifier and keeps widths multiples of round_to."""
    try:
        import torch_pruning as tp
    except ImportError:
        raise MobiforgeError("pruning needs torch-pruning: pip install 'mobiforge[prune]'") from None
    head = model.get_classifier()  # all of it: V3 has a hidden Linear before the last one
    ignored = [module for module in head.modules() if isinstance(module, nn.Linear)]
    ignored += [module for module in kept_front(model, config.keep_blocks).modules() if isinstance(module, nn.Conv2d)]
    return tp.pruner.MetaPruner(
        model,
        example,
        importance=_importance(config.importance),
        global_pruning=config.global_pruning,
        pruning_ratio=ratio,
        max_pruning_ratio=0.9,  # a layer keeps at least a tenth of its channels
        iterative_steps=steps,
        ignored_layers=ignored,
        round_to=config.round_to,
    )


def kept_front(model: nn.Module, blocks: int) -> nn.Module:
    """The first ``blocks`` of ``model.features``, which pruning leaves as they are (an empty module for 0).
    Ignoring their convs is enough: torch-pruning then removes none of their output channels, so the input channels
    of the first pruned block that they feed stay too."""
    if not blocks:
        return nn.Sequential()
    features = getattr(model, "features", None)
    name = (getattr(model, "spec", None) or {}).get("name", type(model).__name__)
    if not isinstance(features, nn.Sequential):
        raise MobiforgeError(f"--keep-blocks {blocks}: {name} has no block sequence; use --keep-blocks 0")
    if blocks >= len(features):
        raise MobiforgeError(f"--keep-blocks must be below {len(features)} for {name} (its blocks), got {blocks}")
    return features[:blocks]


def prune_model(
    model: nn.Module,
    example: torch.Tensor,
    config: PruneConfig,
    ratio: float,
    gradient_fn: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """Prune ``model`` in place by ``ratio`` in ``config.iterative_steps`` steps; returns it."""
    model.eval()
    pruner = build_pruner(model, example, config, ratio, config.iterative_steps)
    for _ in range(config.iterative_steps):
        if config.importance == "taylor":
            if gradient_fn is None:
                raise MobiforgeError("--importance taylor needs training data for its gradients")
            gradient_fn(model)
        pruner.step()
        model.zero_grad(set_to_none=True)
    return model


def ratio_for_target(
    model: nn.Module,
    example: torch.Tensor,
    config: PruneConfig,
    measure: Callable[[nn.Module], int],
    target: int,
    gradient_fn: Callable[[nn.Module], None] | None = None,
) -> float:
    """The smallest channel ratio whose pruned copy has ``measure(copy) <= target`` (bisection on copies)."""
    one_shot = dataclasses.replace(config, iterative_steps=1)
    low, high = 0.0, 0.9
    trial = prune_model(copy.deepcopy(model), example, one_shot, high, gradient_fn)
    if measure(trial) > target:
        raise MobiforgeError(
            f"the target cannot be reached: removing 90% of the channels leaves {measure(trial):,} "
            f"(target {target:,}); choose a smaller model or a larger target"
        )
    for _ in range(10):
        middle = (low + high) / 2
        trial = prune_model(copy.deepcopy(model), example, one_shot, middle, gradient_fn)
        low, high = (low, middle) if measure(trial) <= target else (middle, high)
    return high


def recalibrate_on_training_images(
    model: nn.Module,
    data: DataConfig,
    classes: list[str],
    preprocess: Preprocess,
    images: int,
    seed: int = 0,
    kept: nn.Module | None = None,
) -> nn.Module:
    """``recalibrate_bn`` on up to ``images`` training images drawn at random, seen as at evaluation (no
    augmentation: the statistics are those the deployed model meets)."""
    samples = split_samples(data, "train", classes)
    chosen = random.Random(seed).sample(samples, min(images, len(samples)))
    dataset = ImageSamples(chosen, eval_transform(preprocess), draft_size=preprocess.resize_size)
    workers = data.resolved_workers(cached=False, device_type="cpu")
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=workers)
    return recalibrate_bn(model, (batch for batch, _ in loader), kept)


def measure_figures(model: nn.Module, img_size: int, threads: int | None, top1: float | None) -> ModelFigures:
    """Parameters, MACs and batch-1 latency (median and p90 over >= 1 s, channels_last, eager PyTorch)."""
    model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    example = torch.randn(1, 3, img_size, img_size).contiguous(memory_format=torch.channels_last)
    with num_threads(threads), torch.no_grad():
        latency = measure_latency(lambda: model(example), min_seconds=2.0)
    macs = count_macs(model, (1, 3, img_size, img_size))
    return ModelFigures(count_params(model), macs, latency.median_ms, latency.p90_ms, top1)


def prune_and_save(
    checkpoint: Checkpoint,
    prune_fn: Callable[[nn.Module], float],
    data: DataConfig,
    recalibration_images: int,
    seed: int,
    path: Path,
    record: dict[str, Any],
    keep_blocks: int = 0,
) -> tuple[Checkpoint, float]:
    """The one prune -> recalibrate -> respec -> save flow (``mobiforge prune`` and ship's pruned teacher).

    ``prune_fn`` prunes the checkpoint's model in place and returns its channel ratio. BatchNorm statistics are then
    re-estimated on ``recalibration_images`` training images of ``data`` (0: not; the old ones describe sums over
    channels that are gone), and the new widths are written into the spec, so the saved file rebuilds with
    ``weights_only=True``. ``record`` (plus the ratio) is stored as the checkpoint's ``pruning`` entry. The first
    ``keep_blocks`` blocks, left unpruned, keep their statistics too."""
    model = checkpoint.model()
    ratio = prune_fn(model)
    classes = checkpoint.named_classes()
    if recalibration_images:
        kept = kept_front(model, keep_blocks)
        recalibrate_on_training_images(model, data, classes, checkpoint.preprocess, recalibration_images, seed, kept)
    rebuilt = Checkpoint(spec=respec(model), state_dict=model.state_dict()).model()
    pruned = Checkpoint.of(
        rebuilt,
        classes=classes,
        preprocess=checkpoint.preprocess,
        epoch=0,
        config=checkpoint.config,
        pruning={"source": checkpoint.source, **record, "ratio": ratio},
    )
    pruned.save(path)
    return pruned, ratio


def taylor_gradients(checkpoint: Checkpoint, data: DataConfig, batches: int) -> Callable[[nn.Module], None]:
    """Accumulates the loss gradients of a few training batches (what Taylor importance scores channels by). A model
    with the same weights as the last one seen (the copies a target's bisection prunes) gets those gradients back
    instead of new passes: 11 trials cost one."""
    samples = split_samples(data, "train", checkpoint.named_classes())
    dataset = ImageSamples(samples, train_transform(data), seed=0)
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=data.batch_size, shuffle=True, generator=generator)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}  # name -> (weights, their gradient)

    def accumulate(model: nn.Module) -> None:
        model.zero_grad(set_to_none=True)
        params = dict(model.named_parameters())
        if seen.keys() == params.keys() and all(
            seen[name][0].shape == param.shape and torch.equal(seen[name][0], param.detach())
            for name, param in params.items()
        ):
            for name, param in params.items():
                param.grad = None if seen[name][1] is None else seen[name][1].clone()
            return
        for index, (images, targets) in enumerate(loader):
            if index == batches:
                break
            nn.functional.cross_entropy(model(images), targets).backward()
        seen.clear()
        seen.update(
            {name: (p.detach().clone(), None if p.grad is None else p.grad.clone()) for name, p in params.items()}
        )

    return accumulate


def _saved_run(checkpoint: Checkpoint, config: PruneConfig) -> TrainConfig:
    """The checkpoint's training config with this command's data folder and loader settings and the checkpoint's
    own input size and normalisation (used for Taylor gradients and for fine-tuning alike)."""
    saved = TrainConfig.from_dict(checkpoint.config) if checkpoint.config else TrainConfig()
    preprocess = checkpoint.preprocess
    data = dataclasses.replace(
        saved.data,
        data=config.data or saved.data.data,
        img_size=preprocess.img_size,
        mean=preprocess.mean,
        std=preprocess.std,
        batch_size=config.batch_size,
        workers=config.workers,
    )
    return dataclasses.replace(saved, data=data)


def _finetune_config(checkpoint: Checkpoint, config: PruneConfig, pruned_path: Path, run_dir: Path) -> TrainConfig:
    """The original run's data settings, this command's optimiser, starting from the pruned checkpoint."""
    return dataclasses.replace(
        _saved_run(checkpoint, config),
        optim=config.optim,
        epochs=config.finetune_epochs,
        init_from=str(pruned_path),
        distill=config.distill,
        pretrained=False,
        weights=None,
        freeze_epochs=0,
        resume=None,
        seed=config.seed,
        threads=config.threads,
        runs_dir=str(run_dir.parent),
        name=run_dir.name,
        tensorboard=False,
    )


def prune(config: PruneConfig, reporter: Reporter | None = None) -> PruneResult:
    """Prune ``config.checkpoint``, fine-tune it, and measure both (see the module docstring)."""
    reporter = reporter or SilentReporter()
    _check(config)
    checkpoint = Checkpoint.load(config.checkpoint)
    checkpoint.named_classes()
    check_prunable(checkpoint.spec["name"])
    kept_front(checkpoint.model(), config.keep_blocks)  # a bad --keep-blocks fails before any measurement
    run_dir = Path(config.runs_dir) / (
        config.name or f"{checkpoint.spec['name']}-pruned-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if (run_dir / "pruned.pt").exists():
        raise MobiforgeError(f"{run_dir} already holds a pruning run; choose another --name")
    if (run_dir / "last.pt").exists():
        raise MobiforgeError(f"{run_dir} already holds a run; choose another --name")
    claim_run_dir(run_dir, "prune")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    before = _figures(checkpoint, Path(config.checkpoint), config)
    reporter.message(f"before: {_describe(before)}")
    record = {"importance": config.importance, "global": config.global_pruning, "keep_blocks": config.keep_blocks}
    data, images = _saved_run(checkpoint, config).data, config.bn_recalibration_images
    pruned_path = run_dir / "pruned.pt"
    pruned_ckpt, ratio = prune_and_save(
        checkpoint, _pruning(checkpoint, config), data, images, 0, pruned_path, record, config.keep_blocks
    )
    if images:
        reporter.message(f"BatchNorm statistics re-estimated on {images} training images")
    pruned = _figures(pruned_ckpt, pruned_path, config)
    reporter.message(f"pruned ({ratio:.0%} of channels): {_describe(pruned)} before fine-tuning")

    after, final_path = None, pruned_path
    if config.finetune_epochs:
        finetuned = train(_finetune_config(checkpoint, config, pruned_path, run_dir), reporter)
        if finetuned.history:  # train() already evaluated best.pt on the same val split: no second pass
            final_path = run_dir / "best.pt"
            after = dataclasses.replace(pruned, top1=finetuned.best_top1)
    result = PruneResult(run_dir, before, pruned, after, final_path, pruned_ckpt.spec)
    report = {**result.to_dict(), "config": dataclasses.asdict(config)}
    write_atomic(run_dir / "prune_report.json", json.dumps(report, indent=2))
    return result


def _pruning(checkpoint: Checkpoint, config: PruneConfig) -> Callable[[nn.Module], float]:
    """The function that prunes a model in place by ``config`` (a ratio, or the ratio that meets a MAC or parameter
    target) and returns the ratio."""
    size = checkpoint.preprocess.img_size
    example = torch.randn(1, 3, size, size)
    gradient_fn = None
    if config.importance == "taylor":
        gradient_fn = taylor_gradients(checkpoint, _saved_run(checkpoint, config).data, config.calibration_batches)

    def prune_fn(model: nn.Module) -> float:
        ratio = config.ratio
        if ratio is None:
            target = config.target_macs if config.target_macs is not None else config.target_params
            measure: Callable[[nn.Module], int] = (
                (lambda m: count_macs(m, (1, 3, size, size))) if config.target_macs is not None else count_params
            )
            ratio = ratio_for_target(model, example, config, measure, int(target or 0), gradient_fn)
        prune_model(model, example, config, ratio, gradient_fn)
        return ratio

    return prune_fn


def _figures(checkpoint: Checkpoint, path: Path, config: PruneConfig) -> ModelFigures:
    """Size, speed and val top-1 of a checkpoint (saved at ``path``)."""
    workers = loader_workers(config.workers)
    evaluated = evaluate_checkpoint(path, config.data, "val", config.batch_size, workers)
    return measure_figures(checkpoint.model(), checkpoint.preprocess.img_size, config.threads, evaluated.result.top1)


def _describe(figures: ModelFigures) -> str:
    return (
        f"{figures.params / 1e6:.3f}M params, {figures.macs / 1e6:.1f}M MACs, {figures.latency_ms:.2f} ms, "
        f"val top-1 {figures.top1:.2f}%"
    )
