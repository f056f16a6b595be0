"""``train(config)``: data in, a trained checkpoint out, in a run directory that survives interruption.

Run directory ``runs/NAME/``: ``config.yaml`` (the resolved config), ``last.pt`` (after every epoch, and on
Ctrl-C), ``best.pt`` (best val top-1), ``metrics.csv``, ``curves.png``, ``confusion.png`` and TensorBoard events
when TensorBoard is installed (those three, and an MLflow run with ``--mlflow``, written by the listeners of
``mobiforge.callbacks``).

One loop for every run: a network trained whole on images, and a cached tail (``--trainable-blocks``: the tail
trains on its frozen trunk's cached outputs, ``mobiforge.transfer``) are two data sources and tasks of the same
``Trainer``; a batch's extra tensors (a teacher's cached logits) ride in it to the loss.

Exact resume: the data order of an epoch is a function of (seed, epoch), augmentation is seeded per sample, the
scheduler steps per iteration, and checkpoints carry the optimizer, scheduler, scaler, EMA and RNG states and the
step reached within the epoch. A run killed at any point and resumed from ``last.pt`` therefore ends with the
same weights and metrics as one that was never stopped (with ``deterministic=True``; tested).

Scale-out: launched by ``torchrun``, each process trains on its shard (DistributedSampler, DDP with gloo on CPU
and NCCL on GPU); only rank 0 writes files; evaluation counts are summed across ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torchvision.transforms import v2

from mobiforge import engine
from mobiforge.callbacks import Callback, Callbacks, Event, default_callbacks, merged
from mobiforge.checkpoint import load_checkpoint, model_checkpoint, save_checkpoint
from mobiforge.config import CACHE_MODES, DataConfig
from mobiforge.config import TrainConfig as TrainConfig  # public here too
from mobiforge.data import (
    DatasetSplits,
    ImageSamples,
    PadCropBatch,
    batch_augment,
    cache_specs,
    check_images,
    discover,
    eval_stages,
    eval_transform,
    memory_budget,
    train_stages,
    train_transform,
)
from mobiforge.errors import MobiforgeError
from mobiforge.log import logger
from mobiforge.losses import distillation_loss
from mobiforge.models.base import Preprocess
from mobiforge.models.whitening import first_conv, identity_init, whiten_first_conv
from mobiforge.progress import Reporter, SilentReporter
from mobiforge.runs import (
    TrainResult,
    claim_run_dir,
    prepare_run_dir,
    starting_point,
    train_kind,
    write_config,
)
from mobiforge.transfer import CachedTail, prepare_tail

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
    """Training samples keyed ``epoch * n + index`` (see ``EpochKeySampler``). With ``batch_transform`` (cached
    images only) the loader fetches a whole batch at once and augments it in one pass, seeded by its keys."""

    batch_transform: PadCropBatch | None = None

    def __getitem__(self, key: int) -> tuple[torch.Tensor, int]:
        self.epoch, index = divmod(key, len(self.samples))
        return super().__getitem__(index)

    def __getitems__(self, keys: list[int]) -> list[tuple[torch.Tensor, int]]:
        if self.batch_transform is None or self.images is None:
            return [self[key] for key in keys]
        samples = [self.samples[key % len(self.samples)] for key in keys]
        images = torch.stack([self.images[path] for path, _ in samples])
        generator = torch.Generator().manual_seed(hash((self.seed, *keys)) & 0x7FFF_FFFF_FFFF_FFFF)
        labels = [label for _, label in samples]
        return list(zip(self.batch_transform(images, generator).unbind(0), labels, strict=True))


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
    device = engine.resolve_device(device_name)
    if world_size <= 1:
        return Distributed(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")  # DDP's ranks: a GPU each, or the CPU
    engine.join_process_group("nccl" if device.type == "cuda" else "gloo")
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


@contextlib.contextmanager
def _resumable(path: str | None) -> Iterator[None]:
    """Reading a --resume checkpoint's training state: a missing or malformed part is one line naming the file."""
    try:
        yield
    except MobiforgeError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as error:
        what = f"no {error}" if isinstance(error, KeyError) else (str(error).strip().splitlines() or [""])[0][:160]
        raise MobiforgeError(
            f"--resume {path}: not a resumable training checkpoint ({what}); resume from a run's last.pt, "
            "or start a new run from its weights with --init-from"
        ) from None


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


class _NoStop:
    """No Ctrl-C handling of its own: the signal stops the run at once (a run that cannot resume)."""

    requested = False


# ----------------------------------------------------------------------------------------------------- train


WHITENING_IMAGES = 512  # training images whose patches set --whiten-stem's filters (260k patches at 32 px)
EPOCH_END = Event.EPOCH_END  # public here too: the event ship's budget callbacks listen to


class Trainer:
    """One training run, in pieces: ``setup`` (config, model, data, optimisation, restore, run directory), ``fit``
    (the epoch loop), ``train_epoch``, ``evaluate``, ``save``.

    Callers extend a run through callbacks instead of new parameters (as Ultralytics' trainer does): each listener
    of an ``Event`` (``mobiforge.callbacks``) gets the trainer, a ``RunView``: after an epoch's evaluation and
    checkpoint it may read ``epoch`` (epochs done), ``epoch_seconds`` (that epoch's wall time, evaluation and
    checkpointing included), ``whole_epoch`` (it started at its first step in this session), ``frozen`` (it trained
    the head only) and ``config``, and may call ``set_epochs`` (re-plan the run's length and learning-rate
    schedule) or ``stop`` (end the run after this epoch; it stays resumable). ``mobiforge.ship`` keeps its time
    budget that way; ``metrics.csv``, TensorBoard, the plots and MLflow are listeners too.

    The data source is the image folder, or with ``trainable_blocks`` the cached tail (``transfer.CachedTail``):
    its network's tail trains on cached trunk outputs, its checkpoints hold the whole network, and it is not
    resumable (its epochs take seconds: the same command trains it again).
    """

    def __init__(
        self, config: TrainConfig, reporter: Reporter | None = None, callbacks: Callbacks | None = None
    ) -> None:
        _check_config(config)  # before defaults fill in: an explicit 0 is an error, not "use the default"
        self.config = config
        self.reporter = reporter or SilentReporter()
        self.callbacks: Callbacks = merged(callbacks)
        self.history: list[dict[str, Any]] = []
        self.best_top1 = -1.0
        self.epoch = self.start_step = 0
        self.partial = _no_partial()  # the part of an epoch done before an interruption
        self.epoch_seconds, self.whole_epoch, self.frozen = 0.0, True, False
        self.last_eval: engine.EvalResult | None = None
        self.interrupted = False
        self._stop_reason: str | None = None
        self.fixed_params: list[nn.Parameter] = []  # never trained (a whitened stem, BN scales held at 1)
        self.cached_tail: CachedTail | None = None  # the data source, when it is a cached tail

    def add_callback(self, event: Event | str, callback: Callback) -> None:
        self.callbacks.setdefault(Event(event), []).append(callback)

    def _fire(self, event: Event) -> None:
        for callback in self.callbacks.get(event, []):
            callback(self)

    # ------------------------------------------------------------------------------------------------ setup

    def setup(self) -> None:
        if self.config.trainable_blocks is not None:
            self._setup_cached_tail()
        else:
            self._setup_images()
        if self.ddp.is_main:  # the files beside the checkpoints: rank 0 alone writes them
            self.callbacks = merged(default_callbacks(self.config), self.callbacks)

    def _setup_cached_tail(self) -> None:
        """The cached tail as the data source: its tail is the model that trains and is evaluated, on batches of
        cached rows; the whole network is what the checkpoints hold."""
        self._resolve_config(None)
        # under torchrun the ranks share the cache pass (``transfer``); then rank 0 trains the tail alone, a few
        # seconds an epoch against the pass's minutes, and the others are done
        ranks, _ = setup_distributed("cpu")
        self.ddp, self.device = Distributed() if ranks.is_main else ranks, torch.device("cpu")
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        torch.manual_seed(self.config.seed)
        tail = self.cached_tail = prepare_tail(self.config, self.reporter)
        if ranks.enabled and ranks.is_main and not self.config.threads:  # the others are done: every core is free
            torch.set_num_threads(os.cpu_count() or 1)
        self.config, self.run_dir, self.classes, self.splits = tail.config, tail.run_dir, tail.classes, tail.splits
        self.model, self.preprocess, self.img_size = tail.model, tail.model.preprocess, self.config.data.img_size
        self.train_model = self.eval_model = tail.tail
        self.train_loader, self.val_loader = tail.loaders()
        self.sampler = None
        self.optimizer = engine.build_optimizer(tail.tail, self.config.optim)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]  # before the scheduler: for a re-plan
        epochs = self.config.epochs or 1
        self.scheduler = engine.build_scheduler(self.optimizer, self.config.optim, epochs, len(self.train_loader))
        self.amp_dtype, self.scaler, self.ema, self.batch_transform = None, None, None, None
        self.loss_fn = tail.loss()

    def _setup_images(self) -> None:
        resume_ckpt = load_checkpoint(self.config.resume) if self.config.resume else None
        self._resolve_config(resume_ckpt)
        self.run_dir = prepare_run_dir(self.config, resume_ckpt)  # checked before any work, written after
        self.ddp, self.device = setup_distributed(self.config.device)
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)  # denormal floats slow CPU kernels down; measured 5-10% faster here
        _seed_everything(self.config.seed, self.config.deterministic)
        self._build_model(resume_ckpt)
        self._build_data()
        if self.config.whiten_stem:
            self._whiten_stem(fresh=resume_ckpt is None)
        if self.config.identity_init and resume_ckpt is None:
            identity_init(self.model)
        self._build_optimisation()
        if resume_ckpt is not None:
            with _resumable(self.config.resume):
                self._restore(resume_ckpt)
        self._open_run_dir(resume_ckpt)
        self._wrap_model()

    def _resolve_config(self, resume_ckpt: dict[str, Any] | None) -> None:
        """A resumed run keeps its own config (only the epoch count may be raised); a new one gets its defaults."""
        config = self.config
        if resume_ckpt is not None:
            with _resumable(config.resume):
                saved = TrainConfig.from_dict(resume_ckpt["config"])
                done = int(resume_ckpt["epoch"])
            if config.epochs is not None and config.epochs < done:  # before anything in the run is rewritten
                raise MobiforgeError(
                    f"--epochs {config.epochs}: {config.resume} has already trained {done} epochs; "
                    f"resume with --epochs above {done}, or leave it out to finish the run's own {saved.epochs}"
                )
            config = dataclasses.replace(saved, resume=config.resume, epochs=config.epochs or saved.epochs)
        else:
            config = dataclasses.replace(config, epochs=config.epochs or 30)  # never mutate the caller's config
        self.config = config

    def _build_model(self, resume_ckpt: dict[str, Any] | None) -> None:
        self.splits = discover(self.config.data)
        self.classes = self.splits.classes
        start = starting_point(self.config, self.classes, resume_ckpt["spec"] if resume_ckpt else None)
        if start.pretrained and resume_ckpt is None:
            self.reporter.message(
                f"starting from {start.model.pretrained} weights; new classifier for {len(self.classes)} classes"
            )
        self.config, self.img_size, self.pretrained = start.config, start.img_size, start.pretrained
        self.preprocess, model = start.preprocess, start.model
        model.to(self.device)
        if self.config.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model

    def _build_data(self) -> None:
        config, ddp = self.config, self.ddp
        splits = self.splits = _checked_images(self.splits, config.data, self.preprocess, self.reporter)
        val_samples = splits.val[ddp.rank :: ddp.world_size] if ddp.enabled else splits.val
        if splits.images is not None:  # decoded once: each epoch runs only the random steps of the recipe
            augment = v2.Compose(train_stages(config.data, cached=True)[1])
            train_set = EpochKeyedSamples(splits.train, augment, seed=config.seed, images=splits.images)
            train_set.batch_transform = batch_augment(config.data)
            val_set = ImageSamples(val_samples, v2.Compose(eval_stages(self.preprocess)[1]), images=splits.images)
        else:
            transform = train_transform(config.data)
            train_set = EpochKeyedSamples(splits.train, transform, seed=config.seed, draft_size=2 * self.img_size)
            draft = self.preprocess.resize_size
            val_set = ImageSamples(val_samples, eval_transform(self.preprocess), draft_size=draft)
        workers = config.data.resolved_workers(splits.images is not None, self.device.type)
        base_sampler = DistributedSampler(
            range(len(train_set)), num_replicas=ddp.world_size, rank=ddp.rank, shuffle=True, seed=config.seed
        )
        self.sampler = EpochKeySampler(base_sampler, len(train_set))
        drop_last = len(base_sampler) > config.data.batch_size  # a last batch of 1 breaks BatchNorm
        batch = config.data.batch_size
        self.train_loader = _loader(train_set, self.sampler, batch, workers, drop_last, self.device)
        self.val_loader = _loader(val_set, None, batch, workers, False, self.device)

    def _whiten_stem(self, fresh: bool) -> None:
        """``--whiten-stem``: the first conv whitens a sample of the training images' patches and is never trained
        (a resumed run's checkpoint holds the filters already; only the freeze is restored, before DDP wraps the
        model)."""
        if fresh:
            dataset = self.train_loader.dataset
            generator = torch.Generator().manual_seed(self.config.seed)
            picks = torch.randperm(len(dataset), generator=generator)[:WHITENING_IMAGES].tolist()
            images = torch.stack([dataset[key][0] for key in picks])  # keys below len: epoch 0's augmented views
            whiten_first_conv(self.model, images)
        self.fixed_params = [first_conv(self.model).weight.requires_grad_(False)]

    def _build_optimisation(self) -> None:
        config, model = self.config, self.model
        if config.optim.norm_bias_lr_scale != 1.0:  # airbench's pairing: BN scales held at 1, biases learn faster
            scales = engine.norm_parameters(model)[0]
            self.fixed_params += [scale.requires_grad_(False) for scale in scales]
        head = model.get_classifier() if (self.pretrained or config.backbone_lr_scale != 1.0) else None
        self.optimizer = engine.build_optimizer(model, config.optim, head, config.backbone_lr_scale)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]  # before a scheduler or resume
        self.scheduler = engine.build_scheduler(self.optimizer, config.optim, config.epochs, len(self.train_loader))
        self.amp_dtype = engine.resolve_amp(config.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.ema = engine.build_ema(model, config.optim.ema_decay)
        self.loss_fn: engine.LossFn = engine.cross_entropy_loss(config.optim.label_smoothing)
        if config.distill is not None:
            smoothing = config.optim.label_smoothing
            self.loss_fn = distillation_loss(
                config.distill, self.classes, model, self.preprocess, smoothing, self.device
            )
        self.batch_transform = _mixup_cutmix(config.data, len(self.classes))

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        """Everything a resumed run continues from: weights, optimiser, schedule, scaler, EMA, progress, RNG."""
        self.model.load_state_dict(checkpoint.get("train_state_dict") or checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        if self.ema is not None and checkpoint.get("ema"):
            self.ema.load_state_dict(checkpoint["ema"])
        self.epoch, self.start_step = int(checkpoint["epoch"]), int(checkpoint.get("step_in_epoch", 0))
        metrics = checkpoint.get("metrics", {})
        self.history = list(metrics.get("history", []))
        self.best_top1 = float(metrics.get("best_top1", -1.0))
        self.partial = dict(checkpoint.get("partial_epoch") or self.partial)
        _restore_rng(checkpoint["rng"])
        if int(checkpoint["config"]["epochs"]) != self.config.epochs:  # --epochs raised: the schedule ends there
            steps = len(self.train_loader)
            done = self.epoch * steps + self.start_step
            self.scheduler = engine.rescheduled(
                self.optimizer, self.config.optim, self.base_lrs, self.config.epochs, steps, done
            )

    def _open_run_dir(self, resume_ckpt: dict[str, Any] | None) -> None:
        if self.ddp.is_main:
            claim_run_dir(self.run_dir, train_kind(self.config))
            self._write_config()

    def _wrap_model(self) -> None:
        self.train_model: nn.Module = self.model
        if self.ddp.enabled:
            # Frozen-backbone epochs leave parameters without gradients, which DDP must be told to expect.
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.config.freeze_epochs > 0,
            )
        if self.config.compile:
            self.train_model = torch.compile(self.train_model)
        self.eval_model = self.ema.module if self.ema is not None else self.model

    # -------------------------------------------------------------------------------------------------- fit

    def fit(self) -> TrainResult:
        """Set up, then train until the planned epochs are done, a callback stops the run, or Ctrl-C."""
        self.setup()
        if not self.ddp.is_main and self.cached_tail is not None:  # its share of the cache pass is done
            return TrainResult(self.run_dir, 0.0, [], False)
        info = self._start_info()
        logger.debug("training: %s", info)
        self.reporter.start(info)
        self._fire(Event.TRAIN_START)
        # A cached tail is not resumable: Ctrl-C stops it at once, as any other function (ship saves its own state)
        with _StopFlag() if self.cached_tail is None else contextlib.nullcontext(_NoStop()) as stop:
            self._should_stop = _stop_check(stop, self.ddp, self.device)
            while self.epoch < (self.config.epochs or 0):  # not a range: a callback may re-plan the count
                started, self.whole_epoch = time.time(), self.start_step == 0
                self._fire(Event.EPOCH_START)
                stats = self.train_epoch()
                if stats.steps < len(self.train_loader):  # stopped by Ctrl-C mid-epoch
                    self._save_interrupted(stats)
                    break
                self.start_step, self.partial = 0, _no_partial()
                self._precise_bn()
                self.last_eval = self.evaluate()
                self._end_epoch(stats)
                if self._should_stop():  # under torchrun: any rank's Ctrl-C, on every rank
                    self.interrupted = True
                    break
                self.epoch_seconds = time.time() - started
                self._fire(Event.EPOCH_END)
                if self.ddp.enabled:
                    self._follow_rank_zero()
                if self._stop_reason is not None:
                    self.reporter.message(self._stop_reason)
                    break
        self._finish()
        return TrainResult(self.run_dir, self.best_top1, self.history, self.interrupted)

    def train_epoch(self) -> engine.EpochStats:
        """One epoch (or what is left of it after a resume) of the train loop's ``train_one_epoch``."""
        config, epoch = self.config, self.epoch
        if self.sampler is not None:  # an image folder's (a cached tail's batches draw from their own generator)
            self.sampler.set_epoch(epoch)
            self.frozen = epoch < config.freeze_epochs
            _set_backbone_trainable(self.model, trainable=not self.frozen, fixed=self.fixed_params)
        try:
            return engine.train_one_epoch(
                self.train_model,
                self.train_loader,
                self.optimizer,
                self.scheduler,
                self.loss_fn,
                epoch=epoch,
                device=self.device,
                amp_dtype=self.amp_dtype,
                scaler=self.scaler,
                ema=self.ema,
                clip_grad=config.optim.clip_grad,
                channels_last=config.channels_last and self.cached_tail is None,  # cached rows are not images
                batch_transform=self.batch_transform,
                frozen_bn=self.frozen or config.freeze_bn,
                start_step=self.start_step,
                carried=(self.partial["loss_sum"], int(self.partial["images"]), self.partial["seconds"]),
                progress=self.reporter.step if self.ddp.is_main else None,
                should_stop=self._should_stop,
            )
        except engine.DivergedError as error:
            last = self.run_dir / "last.pt"
            kept = f"; the last good checkpoint is {last}" if last.exists() else ""
            raise engine.DivergedError(f"{error}{kept}. Lower --lr or set --clip-grad") from None

    def _precise_bn(self) -> None:
        """Before an evaluation that decides best.pt: BatchNorm statistics of the weights being evaluated,
        re-estimated on ``precise_bn`` training images (the same ones every epoch and on every rank)."""
        if self.cached_tail is not None:  # its BatchNorm layers learn on cached rows; the statistics are the run's
            return
        images = min(self.config.precise_bn, len(self.train_loader.dataset))
        if not images or self.frozen or self.config.freeze_bn:
            return
        indices = random.Random(self.config.seed).sample(range(len(self.train_loader.dataset)), images)
        loader = DataLoader(
            torch.utils.data.Subset(self.train_loader.dataset, indices),
            batch_size=self.config.data.batch_size,
            num_workers=self.train_loader.num_workers,
        )
        memory = torch.channels_last if self.config.channels_last else torch.contiguous_format
        engine.recalibrate_bn(self.eval_model, (images.to(self.device, memory_format=memory) for images, _ in loader))

    def evaluate(self) -> engine.EvalResult:
        """Top-1/top-5 and loss on the val split, of the weights a checkpoint stores (the EMA's, when on)."""
        return engine.evaluate(
            self.eval_model,
            self.val_loader,
            len(self.classes),
            device=self.device,
            amp_dtype=self.amp_dtype,
            channels_last=self.config.channels_last and self.cached_tail is None,
            distributed=self.ddp.enabled,
        )

    def _end_epoch(self, stats: engine.EpochStats) -> None:
        assert self.last_eval is not None
        row = {
            "epoch": self.epoch + 1,
            "train_loss": stats.loss,
            "val_loss": self.last_eval.loss,
            "val_top1": self.last_eval.top1,
            "val_top5": self.last_eval.top5,
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": stats.seconds,
            "images_per_second": stats.images_per_second * self.ddp.world_size,
        }
        self.history.append(row)
        is_best = self.last_eval.top1 > self.best_top1
        self.best_top1 = max(self.best_top1, self.last_eval.top1)
        self.epoch += 1
        if self.ddp.is_main:
            self.save(is_best)
        self.reporter.epoch({**row, "best_top1": self.best_top1, "epochs": self.config.epochs})

    # ------------------------------------------------------------------------------------------- callbacks

    def set_epochs(self, epochs: int) -> None:
        """Re-plan the run to ``epochs`` (never fewer than done): the learning-rate schedule is stretched or
        shortened to end there, and the new plan is saved so that a resume follows it."""
        epochs = max(self.epoch, epochs)
        if epochs == self.config.epochs:
            return
        self.reporter.message(
            f"re-planned from epoch {self.epoch} ({self.epoch_seconds:.1f} s): {self.config.epochs} -> {epochs} epochs"
        )
        self.config = dataclasses.replace(self.config, epochs=epochs)
        steps = len(self.train_loader)
        self.scheduler = engine.rescheduled(
            self.optimizer, self.config.optim, self.base_lrs, epochs, steps, self.epoch * steps
        )
        if self.ddp.is_main:
            self._write_config()
            self.save(is_best=False)

    def _follow_rank_zero(self) -> None:
        """Rank 0's plan on every rank after an epoch's callbacks: its clock timed the epoch, and ranks that timed
        it otherwise (or that have no callbacks: ship's other ranks) must still run as many epochs and stop
        together, or DDP would hang. Only rank 0's callbacks re-plan or stop a run under torchrun."""
        plan = torch.tensor([self.config.epochs or 0, self._stop_reason is not None], device=self.device)
        dist.broadcast(plan, src=0)
        self.set_epochs(int(plan[0].item()))
        if not plan[1].item():
            self._stop_reason = None
        elif self._stop_reason is None:
            self._stop_reason = f"rank 0 ended the run after epoch {self.epoch}"

    def stop(self, reason: str) -> None:
        """End the run after the current epoch (a planned end, not an interruption: ``last.pt`` resumes it)."""
        self._stop_reason = reason

    # ------------------------------------------------------------------------------------------------- save

    def checkpoint(self, step_in_epoch: int = 0, evaluated: bool = True) -> dict[str, Any]:
        # ``state_dict`` holds the weights the metrics were measured on (the EMA's, when on): eval, export and the
        # article's loaders get the model that was validated; the raw weights only a resume needs go beside them.
        val = {"val": self.last_eval.to_dict(self.classes)} if evaluated and self.last_eval else {}
        if self.cached_tail is not None:  # the whole network, its tail as trained; nothing to resume from
            return model_checkpoint(
                self.model.eval(),
                classes=self.classes,
                preprocess=self.preprocess,
                epoch=self.epoch,
                metrics={"history": self.history, "best_top1": self.best_top1, **val},
                config=self.config.to_dict(),
                **self.cached_tail.checkpoint_extra(),
            )
        return model_checkpoint(
            self.eval_model,
            classes=self.classes,
            preprocess=self.preprocess,
            epoch=self.epoch,
            step_in_epoch=step_in_epoch,
            partial_epoch=self.partial if step_in_epoch else None,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            ema=self.ema.state_dict() if self.ema is not None else None,
            train_state_dict=self.model.state_dict() if self.ema is not None else None,
            rng=_rng_state(),
            metrics={"history": self.history, "best_top1": self.best_top1, **val},
            config=self.config.to_dict(),
            data={
                "description": self.splits.description,
                "train_images": len(self.splits.train),
                "val_images": len(self.splits.val),
            },
        )

    def save(self, is_best: bool, step_in_epoch: int = 0, evaluated: bool = True) -> None:
        """``last.pt`` atomically, and ``best.pt`` as its copy when this epoch scored best."""
        save_checkpoint(self.checkpoint(step_in_epoch, evaluated), self.run_dir / "last.pt")
        if is_best:
            shutil.copyfile(self.run_dir / "last.pt", self.run_dir / ".best.pt.tmp")
            os.replace(self.run_dir / ".best.pt.tmp", self.run_dir / "best.pt")
        self._fire(Event.CHECKPOINT_SAVED)

    def _save_interrupted(self, stats: engine.EpochStats) -> None:
        self.partial = {"loss_sum": stats.loss_sum, "images": stats.images, "seconds": stats.seconds}
        if self.ddp.is_main:
            self.save(is_best=False, step_in_epoch=stats.steps, evaluated=False)
        self.interrupted = True
        last = self.run_dir / "last.pt"
        self.reporter.message(f"interrupted: saved {last}; continue with --resume {last}")

    def _write_config(self) -> None:
        write_config(self.run_dir, self.config)

    def _start_info(self) -> dict[str, Any]:
        tail = self.cached_tail
        return {
            "run_dir": str(self.run_dir),
            "model": self.config.model,
            "params": sum(p.numel() for p in self.train_model.parameters()),
            "classes": len(self.classes),
            "train_images": len(tail.data.train[0])
            if tail
            else len(self.splits.train),  # a tail's: rows, views included
            "val_images": len(self.splits.val),
            "data": "feature cache" if tail else self.splits.description,
            "device": str(self.device),
            "world_size": self.ddp.world_size,
            "img_size": self.img_size,
            "epochs": self.config.epochs,
            "start_epoch": self.epoch,
            "threads": torch.get_num_threads(),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "none",
        }

    def _finish(self) -> None:
        self._fire(Event.TRAIN_END)
        if self.ddp.enabled:
            dist.barrier()


def train(config: TrainConfig, reporter: Reporter | None = None, callbacks: Callbacks | None = None) -> TrainResult:
    """Train ``config.model`` on ``config.data``; returns the run directory and the per-epoch history.

    ``callbacks`` maps an ``Event`` to functions of the ``Trainer`` (see its docstring). With ``trainable_blocks``
    the frozen trunk's outputs are cached and only the tail trains (``mobiforge.transfer``), in the same loop."""
    return Trainer(config, reporter, callbacks).fit()


def _no_partial() -> dict[str, Any]:
    return {"loss_sum": 0.0, "images": 0, "seconds": 0.0}


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
    """Reject values that would otherwise fail deep inside torch with a traceback (numbers are checked against
    their declared ranges when the config is built: ``config.check_ranges``)."""
    if config.data.cache not in CACHE_MODES:
        raise MobiforgeError(f"--cache must be {' or '.join(CACHE_MODES)}, got {config.data.cache}")
    if config.mlflow and importlib.util.find_spec("mlflow") is None:  # before any work: not at the first epoch
        raise MobiforgeError("--mlflow needs MLflow: pip install 'mobiforge[tracking]', or drop --mlflow")
    for flag, asked in (("--whiten-stem", config.whiten_stem), ("--identity-init", config.identity_init)):
        if asked and (config.pretrained or config.init_from or config.weights):
            raise MobiforgeError(f"{flag} starts a model from scratch; drop it, or drop the pretrained weights")


def _set_backbone_trainable(model: nn.Module, trainable: bool, fixed: list[nn.Parameter]) -> None:
    """Freeze or unfreeze everything but the classifier (frozen parameters get no gradient, so no update); the
    ``fixed`` parameters stay frozen either way."""
    head = {id(p) for p in model.get_classifier().parameters()}
    kept = {id(p) for p in fixed}
    for param in model.parameters():
        if id(param) not in head:
            param.requires_grad_(trainable and id(param) not in kept)


def _stop_check(stop: _StopFlag, ddp: Distributed, device: torch.device) -> Callable[[], bool]:
    if not ddp.enabled:
        return lambda: stop.requested

    def agreed() -> bool:  # every rank must stop at the same step, or DDP would hang
        flag = torch.tensor([1.0 if stop.requested else 0.0], device=device)
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    return agreed
