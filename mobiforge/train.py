"""``train(config)``: data in, a trained checkpoint out, in a run directory that survives interruption.

Run directory ``runs/NAME/``: ``config.yaml`` (the resolved config), ``last.pt`` (after every epoch, and on
Ctrl-C), ``best.pt`` (best val top-1), ``metrics.csv``, ``curves.png``, ``confusion.png`` and TensorBoard events
when TensorBoard is installed.

Exact resume: the data order of an epoch is a function of (seed, epoch), augmentation is seeded per sample, the
scheduler steps per iteration, and checkpoints carry the optimizer, scheduler, scaler, EMA and RNG states and the
step reached within the epoch. A run killed at any point and resumed from ``last.pt`` therefore ends with the
same weights and metrics as one that was never stopped (with ``deterministic=True``; tested).

Scale-out: launched by ``torchrun``, each process trains on its shard (DistributedSampler, DDP with gloo on CPU
and NCCL on GPU); only rank 0 writes files; evaluation counts are summed across ranks.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torchvision.transforms import v2

from mobiforge import engine
from mobiforge.checkpoint import load_checkpoint, model_checkpoint, save_checkpoint
from mobiforge.data import (
    CACHE_MODES,
    DataConfig,
    DatasetSplits,
    ImageSamples,
    cache_specs,
    check_images,
    discover,
    eval_stages,
    eval_transform,
    memory_budget,
    preprocess_for,
    train_stages,
    train_transform,
)
from mobiforge.errors import MobiforgeError
from mobiforge.losses import DistillConfig, check_distill_config, distillation_loss
from mobiforge.models import build_from_spec, create_model
from mobiforge.models.base import Preprocess
from mobiforge.models.weights import get_weights
from mobiforge.plots import plot_confusion, plot_curves
from mobiforge.progress import Reporter, SilentReporter

DEADLINE_MARGIN = 1.05  # an epoch is expected to end before a deadline if it would with 5% to spare


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.yaml`` and inside every checkpoint."""

    model: str = "mobilenet_v2"
    width_mult: float | None = None
    small_input: bool | None = None  # None: on for images of 64 px or less
    dropout: float | None = None
    pretrained: bool | str = False  # True or a weights tag: start from pretrained weights (classifier replaced)
    weights: str | None = None  # an explicit weights file for the pretrained entry
    download: bool = False  # allow fetching missing weights from the publisher
    freeze_epochs: int = 0  # train only the classifier for this many epochs (backbone and its BN frozen)
    backbone_lr_scale: float = 1.0  # backbone learning rate relative to the classifier's
    freeze_bn: bool = False  # keep every BatchNorm in eval mode throughout
    init_from: str | None = None  # start from this checkpoint's model and weights (e.g. a pruned one)
    distill: DistillConfig | None = None  # train as the student of a teacher checkpoint
    data: DataConfig = field(default_factory=DataConfig)
    optim: engine.OptimConfig = field(default_factory=engine.OptimConfig)
    epochs: int | None = None  # None: 30 for a new run; a resumed run keeps its own unless this extends it
    seed: int = 0
    deterministic: bool = False
    amp: str = "auto"  # auto | bf16 | fp16 | none
    channels_last: bool = True  # measured several times faster for MobileNets on CPU
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None
    runs_dir: str = "runs"
    name: str | None = None  # default: <model>-<data>-<timestamp>
    resume: str | None = None
    tensorboard: bool = True

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("mean", "std"):
            value = getattr(self.data, key)
            data["data"][key] = list(value) if value is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        data_config = dict(data.pop("data", {}))
        for key in ("mean", "std"):
            if data_config.get(key) is not None:
                data_config[key] = tuple(data_config[key])
        distill = data.pop("distill", None)
        return cls(
            data=DataConfig(**data_config),
            optim=engine.OptimConfig(**data.pop("optim", {})),
            distill=DistillConfig(**distill) if distill else None,
            **data,
        )


@dataclass
class TrainResult:
    run_dir: Path
    best_top1: float
    history: list[dict[str, Any]]
    interrupted: bool = False

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


# ----------------------------------------------------------------------------------------------- data plumbing


class EpochKeySampler(Sampler[int]):
    """Wraps a ``DistributedSampler`` and yields ``epoch * n + index``, so that each sample knows its epoch
    (for its augmentation seed) even inside persistent loader workers."""

    def __init__(self, sampler: DistributedSampler, size: int) -> None:
        self.sampler = sampler
        self.size = size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        offset = self.sampler.epoch * self.size
        return (offset + index for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class EpochKeyedSamples(ImageSamples):
    def __getitem__(self, key: int) -> tuple[torch.Tensor, int]:
        self.epoch, index = divmod(key, len(self.samples))
        return super().__getitem__(index)


def _loader(
    dataset: Any, sampler: Any, batch_size: int, workers: int, drop_last: bool, device: torch.device
) -> DataLoader:
    # The loader draws its workers' base seed from its own generator, not from the global RNG: the global stream
    # (dropout, mixup) must not depend on when loaders are created, or a resumed run would diverge.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(0),
    )


def _mixup_cutmix(config: DataConfig, num_classes: int) -> Callable[..., Any] | None:
    from torchvision.transforms import v2

    choices = []
    if config.mixup > 0:
        choices.append(v2.MixUp(alpha=config.mixup, num_classes=num_classes))
    if config.cutmix > 0:
        choices.append(v2.CutMix(alpha=config.cutmix, num_classes=num_classes))
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


# ------------------------------------------------------------------------------------------------ environment


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment (a single process otherwise)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if world_size <= 1:
        if device_name == "auto":
            return Distributed(), torch.device("cuda" if want_cuda else "cpu")
        if want_cuda and not torch.cuda.is_available():
            raise MobiforgeError(f"--device {device_name}: no CUDA device is available here; use --device cpu")
        return Distributed(), torch.device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return Distributed(rank, world_size, local_rank), device


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state_to_plain(state: tuple[Any, ...]) -> list[Any]:
    # weights_only loading accepts tensors and plain Python values, not numpy arrays.
    return [state[0], torch.from_numpy(state[1].astype(np.int64)), int(state[2]), int(state[3]), float(state[4])]


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, *rest = state["python"]
    random.setstate((version, tuple(rest[0]), rest[1]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


class _StopFlag:
    """First Ctrl-C (or SIGTERM): finish the current step, save, exit. Second Ctrl-C: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no signal handling
            pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------------------------------- train


def default_run_name(config: TrainConfig) -> str:
    data_name = Path(config.data.data).name or "data"
    return f"{config.model}-{data_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _prepare_run_dir(config: TrainConfig, resume_ckpt: dict[str, Any] | None) -> Path:
    if config.resume:
        return Path(config.resume).resolve().parent
    run_dir = Path(config.runs_dir) / (config.name or default_run_name(config))
    if (run_dir / "last.pt").exists():
        raise MobiforgeError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir / 'last.pt'} or choose another --name"
        )
    return run_dir


def train(
    config: TrainConfig,
    reporter: Reporter | None = None,
    deadline: float | None = None,
    replan: Callable[[int, float], int] | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.data``; returns the run directory and the per-epoch history.

    ``deadline`` (a ``time.time()`` value; ship's time budget) ends the run after the last epoch that is expected
    to finish before it, judged by the length of the epoch just done; the run stays resumable with more time.
    ``replan(epochs_done, epoch_seconds)`` is asked once, after the first whole epoch that trains the full network,
    for the run's epoch count; the schedule is stretched or shortened to it, so that a time-budgeted run planned
    from an estimate still ends its learning-rate schedule instead of being cut mid-way or ending early."""
    reporter = reporter or SilentReporter()
    _check_config(config)  # before defaults fill in: an explicit 0 is an error, not "use the default"
    resume_ckpt = load_checkpoint(config.resume) if config.resume else None
    if resume_ckpt is not None:  # the run's own config; only the epoch count may be raised
        saved = TrainConfig.from_dict(resume_ckpt["config"])
        config = dataclasses.replace(saved, resume=config.resume, epochs=config.epochs or saved.epochs)
    else:
        config = dataclasses.replace(config, epochs=config.epochs or 30)  # never mutate the caller's config
    ddp, device = setup_distributed(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal floats slow CPU kernels down; measured 5-10% faster here
    _seed_everything(config.seed, config.deterministic)

    splits = discover(config.data)
    classes = splits.classes
    pretrained = config.pretrained or config.weights is not None
    weights_preprocess = get_weights(config.model, config.pretrained or True).preprocess if pretrained else None
    init_ckpt = _init_checkpoint(config, classes) if resume_ckpt is None else None
    if init_ckpt is not None:  # the starting checkpoint's input size and normalisation, unless set explicitly
        weights_preprocess = Preprocess.from_dict(init_ckpt["preprocess"])
    config = dataclasses.replace(config, data=config.data.resolved(weights_preprocess))
    img_size = config.data.resolved_img_size()
    small_input = config.small_input if config.small_input is not None else img_size <= 64
    if resume_ckpt is not None:  # the checkpoint's own architecture; its weights are loaded below
        model = build_from_spec(resume_ckpt["spec"])
    elif init_ckpt is not None:
        model = build_from_spec(init_ckpt["spec"])
        model.load_state_dict(init_ckpt["state_dict"])
    else:
        model = create_model(
            config.model,
            pretrained=config.pretrained,
            weights=config.weights,
            download=config.download,
            num_classes=len(classes),
            width_mult=config.width_mult,
            small_input=small_input,
            dropout=config.dropout,
        )
    if pretrained and resume_ckpt is None:
        reporter.message(f"starting from {model.pretrained} weights; new classifier for {len(classes)} classes")
    preprocess: Preprocess = preprocess_for(config.data, weights_preprocess)
    model.preprocess = preprocess
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)

    splits = _checked_images(splits, config.data, preprocess, reporter)
    val_samples = splits.val[ddp.rank :: ddp.world_size] if ddp.enabled else splits.val
    if splits.images is not None:  # decoded once: each epoch runs only the random steps of the recipe
        augment = v2.Compose(train_stages(config.data, cached=True)[1])
        train_set = EpochKeyedSamples(splits.train, augment, seed=config.seed, images=splits.images)
        val_set = ImageSamples(val_samples, v2.Compose(eval_stages(preprocess)[1]), images=splits.images)
    else:
        transform = train_transform(config.data)
        train_set = EpochKeyedSamples(splits.train, transform, seed=config.seed, draft_size=2 * img_size)
        val_set = ImageSamples(val_samples, eval_transform(preprocess), draft_size=preprocess.resize_size)
    workers = config.data.resolved_workers(splits.images is not None, device.type)
    base_sampler = DistributedSampler(
        range(len(train_set)), num_replicas=ddp.world_size, rank=ddp.rank, shuffle=True, seed=config.seed
    )
    sampler = EpochKeySampler(base_sampler, len(train_set))
    drop_last = len(base_sampler) > config.data.batch_size  # a last batch of 1 breaks BatchNorm
    train_loader = _loader(train_set, sampler, config.data.batch_size, workers, drop_last, device)
    val_loader = _loader(val_set, None, config.data.batch_size, workers, False, device)

    head = model.get_classifier() if (pretrained or config.backbone_lr_scale != 1.0) else None
    optimizer = engine.build_optimizer(model, config.optim, head, config.backbone_lr_scale)
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # before a scheduler or a resume changes them
    scheduler = engine.build_scheduler(optimizer, config.optim, config.epochs, len(train_loader))
    amp_dtype = engine.resolve_amp(config.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    ema = engine.build_ema(model, config.optim.ema_decay)
    loss_fn: Callable[..., torch.Tensor] = engine.cross_entropy_loss(config.optim.label_smoothing)
    if config.distill is not None:
        loss_fn = distillation_loss(config.distill, classes, model, preprocess, config.optim.label_smoothing, device)
    batch_transform = _mixup_cutmix(config.data, len(classes))

    start_epoch, start_step, history, best_top1 = 0, 0, [], -1.0
    partial = {"loss_sum": 0.0, "images": 0, "seconds": 0.0}  # the part of an epoch done before an interruption
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt.get("train_state_dict") or resume_ckpt["state_dict"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        if scaler is not None and resume_ckpt.get("scaler"):
            scaler.load_state_dict(resume_ckpt["scaler"])
        if ema is not None and resume_ckpt.get("ema"):
            ema.load_state_dict(resume_ckpt["ema"])
        start_epoch, start_step = int(resume_ckpt["epoch"]), int(resume_ckpt.get("step_in_epoch", 0))
        history = list(resume_ckpt.get("metrics", {}).get("history", []))
        best_top1 = float(resume_ckpt.get("metrics", {}).get("best_top1", -1.0))
        partial = dict(resume_ckpt.get("partial_epoch") or partial)
        _restore_rng(resume_ckpt["rng"])

    run_dir = _prepare_run_dir(config, resume_ckpt)
    writer = None
    if ddp.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        _write_metrics_csv(run_dir, history)
        writer = _tensorboard(run_dir) if config.tensorboard else None
    train_model: nn.Module = model
    if ddp.enabled:
        # Frozen-backbone epochs leave parameters without gradients, which DDP must be told to expect.
        train_model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.freeze_epochs > 0,
        )
    if config.compile:
        train_model = torch.compile(train_model)
    eval_model = ema.module if ema is not None else model

    def checkpoint(epoch: int, step_in_epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        # ``state_dict`` holds the weights the metrics were measured on (the EMA's, when on): eval, export and the
        # article's loaders get the model that was validated; the raw weights only a resume needs go beside them.
        return model_checkpoint(
            eval_model,
            classes=classes,
            preprocess=preprocess,
            epoch=epoch,
            step_in_epoch=step_in_epoch,
            partial_epoch=partial if step_in_epoch else None,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else None,
            ema=ema.state_dict() if ema is not None else None,
            train_state_dict=model.state_dict() if ema is not None else None,
            rng=_rng_state(),
            metrics={"history": history, "best_top1": best_top1, **metrics},
            config=config.to_dict(),
            data={"description": splits.description, "train_images": len(splits.train), "val_images": len(splits.val)},
        )

    reporter.start(
        {
            "run_dir": str(run_dir),
            "model": config.model,
            "params": sum(p.numel() for p in model.parameters()),
            "classes": len(classes),
            "train_images": len(splits.train),
            "val_images": len(splits.val),
            "data": splits.description,
            "device": str(device),
            "world_size": ddp.world_size,
            "img_size": img_size,
            "epochs": config.epochs,
            "start_epoch": start_epoch,
            "threads": torch.get_num_threads(),
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "none",
        }
    )
    interrupted = False
    last_eval: engine.EvalResult | None = None
    with _StopFlag() as stop:
        should_stop = _stop_check(stop, ddp, device)
        epoch = start_epoch
        while epoch < config.epochs:  # not a range: a re-plan may change the count
            epoch_started, whole_epoch = time.time(), start_step == 0
            sampler.set_epoch(epoch)
            frozen = epoch < config.freeze_epochs
            _set_backbone_trainable(model, trainable=not frozen)
            try:
                stats = engine.train_one_epoch(
                    train_model,
                    train_loader,
                    optimizer,
                    scheduler,
                    loss_fn,
                    epoch=epoch,
                    device=device,
                    amp_dtype=amp_dtype,
                    scaler=scaler,
                    ema=ema,
                    clip_grad=config.optim.clip_grad,
                    channels_last=config.channels_last,
                    batch_transform=batch_transform,
                    frozen_bn=frozen or config.freeze_bn,
                    start_step=start_step,
                    carried=(partial["loss_sum"], int(partial["images"]), partial["seconds"]),
                    progress=reporter.step if ddp.is_main else None,
                    should_stop=should_stop,
                )
            except engine.DivergedError as error:
                last = run_dir / "last.pt"
                kept = f"; the last good checkpoint is {last}" if last.exists() else ""
                raise engine.DivergedError(f"{error}{kept}. Lower --lr or set --clip-grad") from None
            if stats.steps < len(train_loader):  # stopped by Ctrl-C mid-epoch
                partial = {"loss_sum": stats.loss_sum, "images": stats.images, "seconds": stats.seconds}
                if ddp.is_main:
                    save_checkpoint(checkpoint(epoch, stats.steps, {}), run_dir / "last.pt")
                interrupted = True
                reporter.message(
                    f"interrupted: saved {run_dir / 'last.pt'}; continue with --resume {run_dir / 'last.pt'}"
                )
                break
            start_step, partial = 0, {"loss_sum": 0.0, "images": 0, "seconds": 0.0}
            last_eval = engine.evaluate(
                eval_model,
                val_loader,
                len(classes),
                device=device,
                amp_dtype=amp_dtype,
                channels_last=config.channels_last,
                distributed=ddp.enabled,
            )
            row = {
                "epoch": epoch + 1,
                "train_loss": stats.loss,
                "val_loss": last_eval.loss,
                "val_top1": last_eval.top1,
                "val_top5": last_eval.top5,
                "lr": optimizer.param_groups[0]["lr"],
                "epoch_seconds": stats.seconds,
                "images_per_second": stats.images_per_second * ddp.world_size,
            }
            history.append(row)
            is_best = last_eval.top1 > best_top1
            best_top1 = max(best_top1, last_eval.top1)
            if ddp.is_main:
                state = checkpoint(epoch + 1, 0, {"val": last_eval.to_dict(classes)})
                save_checkpoint(state, run_dir / "last.pt")
                if is_best:
                    shutil.copyfile(run_dir / "last.pt", run_dir / ".best.pt.tmp")
                    os.replace(run_dir / ".best.pt.tmp", run_dir / "best.pt")
                _write_metrics_csv(run_dir, history)
                if writer is not None:
                    for key, value in row.items():
                        if key != "epoch":
                            writer.add_scalar(key, value, epoch + 1)
            reporter.epoch({**row, "best_top1": best_top1, "epochs": config.epochs})
            if stop.requested:
                interrupted = True
                break
            epoch_wall = time.time() - epoch_started  # evaluation and checkpointing included
            if replan is not None and whole_epoch and epoch >= config.freeze_epochs:
                epochs = max(epoch + 1, _agreed_count(replan(epoch + 1, epoch_wall), ddp, device))
                if epochs != config.epochs:
                    reporter.message(
                        f"re-planned from epoch {epoch + 1} ({epoch_wall:.1f} s): {config.epochs} -> {epochs} epochs"
                    )
                    config = dataclasses.replace(config, epochs=epochs)
                    steps = len(train_loader)
                    scheduler = engine.rescheduled(
                        optimizer, config.optim, base_lrs, epochs, steps, (epoch + 1) * steps
                    )
                    if ddp.is_main:  # a resume continues the new plan
                        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
                        state = checkpoint(epoch + 1, 0, {"val": last_eval.to_dict(classes)})
                        save_checkpoint(state, run_dir / "last.pt")
                replan = None
            next_end = time.time() + DEADLINE_MARGIN * epoch_wall
            if deadline is not None and epoch + 1 < config.epochs and next_end > deadline:
                reporter.message(f"time budget reached after epoch {epoch + 1} of {config.epochs}")
                break
            epoch += 1
    if ddp.is_main:
        _finish_plots(run_dir, history, classes)
        if writer is not None:
            writer.close()
    if ddp.enabled:
        dist.barrier()
    return TrainResult(run_dir, best_top1, history, interrupted)


def _checked_images(
    splits: DatasetSplits, data: DataConfig, preprocess: Preprocess, reporter: Reporter
) -> DatasetSplits:
    """Every image checked before training starts, and kept decoded in memory when ``data.cache`` allows."""
    cache = cache_specs(data, preprocess) if data.cache != "none" else None
    budget = memory_budget() if data.cache == "auto" else 2**62
    splits = check_images(splits, data.skip_bad_images, cache, budget)
    if splits.ignored_files:
        reporter.message(f"ignored {splits.ignored_files} file(s) that are not images by extension (e.g. .gif)")
    if cache is not None and splits.images is None:
        reporter.message(f"images read from disk each epoch: decoded they would pass {budget / 2**30:.1f} GiB")
    return splits


def _check_config(config: TrainConfig) -> None:
    """Reject values that would otherwise fail deep inside torch with a traceback."""
    checks = [
        ("--epochs", config.epochs, config.epochs is None or config.epochs >= 1, "at least 1"),
        ("--batch-size", config.data.batch_size, config.data.batch_size >= 1, "at least 1"),
        ("--workers", config.data.workers, config.data.workers is None or config.data.workers >= 0, "0 or more"),
        ("--cache", config.data.cache, config.data.cache in CACHE_MODES, " or ".join(CACHE_MODES)),
        ("--img-size", config.data.img_size, config.data.img_size is None or config.data.img_size >= 8, ">= 8"),
        ("--lr", config.optim.lr, config.optim.lr > 0, "positive"),
        ("--freeze-epochs", config.freeze_epochs, config.freeze_epochs >= 0, "0 or more"),
    ]
    for flag, value, ok, expected in checks:
        if not ok:
            raise MobiforgeError(f"{flag} must be {expected}, got {value}")
    if config.distill is not None:
        check_distill_config(config.distill)


def _init_checkpoint(config: TrainConfig, classes: list[str]) -> dict[str, Any] | None:
    """The checkpoint named by ``init_from``, checked against the data's classes."""
    if not config.init_from:
        return None
    checkpoint = load_checkpoint(config.init_from)
    if checkpoint.get("classes") != classes:
        raise MobiforgeError(
            f"{config.init_from} was trained on {len(checkpoint.get('classes') or [])} other classes than the "
            f"{len(classes)} of {config.data.data}; start from a checkpoint of this dataset"
        )
    return checkpoint


def _set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze everything but the classifier (frozen parameters get no gradient, so no update)."""
    head = {id(p) for p in model.get_classifier().parameters()}
    for param in model.parameters():
        if id(param) not in head:
            param.requires_grad_(trainable)


def _stop_check(stop: _StopFlag, ddp: Distributed, device: torch.device) -> Callable[[], bool]:
    if not ddp.enabled:
        return lambda: stop.requested

    def agreed() -> bool:  # every rank must stop at the same step, or DDP would hang
        flag = torch.tensor([1.0 if stop.requested else 0.0], device=device)
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    return agreed


def _agreed_count(count: int, ddp: Distributed, device: torch.device) -> int:
    """Rank 0's count on every rank: ranks that timed their epochs differently must still stop together."""
    if not ddp.enabled:
        return count
    value = torch.tensor([count], device=device)
    dist.broadcast(value, src=0)
    return int(value.item())


def _write_metrics_csv(run_dir: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    tmp = run_dir / ".metrics.csv.tmp"
    with tmp.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, run_dir / "metrics.csv")


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _finish_plots(run_dir: Path, history: list[dict[str, Any]], classes: list[str]) -> None:
    if history:
        plot_curves(history, run_dir / "curves.png")
    best = run_dir / "best.pt"
    if best.exists():
        confusion = load_checkpoint(best)["metrics"].get("val", {}).get("confusion")
        if confusion is not None:
            plot_confusion(confusion, classes, run_dir / "confusion.png")
