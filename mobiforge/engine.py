"""The training loop as plain functions (``train_one_epoch``, ``evaluate``) and the factories around them.

No CLI and no printing here: progress goes to an optional callback. Pruning fine-tuning, distillation and QAT
reuse these functions (distillation passes its own ``loss_fn``).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mobiforge.config import OptimConfig as OptimConfig  # public here too
from mobiforge.errors import MobiforgeError
from mobiforge.progress import StepInfo

# (logits, targets, inputs, *extra) -> loss: ``extra`` is what rides in a batch after its targets (a teacher's cached
# logits); most losses take the first three only
LossFn = Callable[..., torch.Tensor]
Batch = tuple[torch.Tensor, ...]  # (inputs, targets, *extra)


class TrainingTask:
    """A model and its loss as one step (timm's ``TrainingTask``): it takes the whole batch, inputs, targets and
    whatever rides after them, and returns the loss and the logits. Whatever a loss needs beyond the logits comes
    in the batch, so every run, on images or on cached features, goes through the one loop."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        self.model, self.loss_fn = model, loss_fn

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, *extra: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.model(inputs)
        return self.loss_fn(logits, targets, inputs, *extra), logits


class DivergedError(MobiforgeError):
    """The loss became NaN or infinite."""


def norm_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The BatchNorm scales and biases of ``model``."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    return [m.weight for m in norms], [m.bias for m in norms]


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    decay_norm_and_bias: bool = False,
    head: nn.Module | None = None,
    backbone_lr_scale: float = 1.0,
    norm_bias_lr_scale: float = 1.0,
) -> list[dict[str, Any]]:
    """Parameter groups: BN/bias parameters (1-D tensors) without weight decay unless ``decay_norm_and_bias``;
    when ``head`` is given, the rest of the model (the backbone) at ``lr * backbone_lr_scale``; BN biases at
    ``norm_bias_lr_scale`` times their group's rate."""
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    norm_bias_ids = {id(p) for p in norm_parameters(model)[1]} if norm_bias_lr_scale != 1.0 else set()
    groups: dict[tuple[bool, bool, bool], list[nn.Parameter]] = {}
    for param in model.parameters():
        is_backbone = head is not None and id(param) not in head_ids
        decays = decay_norm_and_bias or param.ndim > 1
        groups.setdefault((is_backbone, decays, id(param) in norm_bias_ids), []).append(param)
    return [
        {
            "params": params,
            "lr": lr * (backbone_lr_scale if is_backbone else 1.0) * (norm_bias_lr_scale if norm_bias else 1.0),
            "weight_decay": weight_decay if decays else 0.0,
        }
        for (is_backbone, decays, norm_bias), params in sorted(groups.items())
    ]


def build_optimizer(
    model: nn.Module, config: OptimConfig, head: nn.Module | None = None, backbone_lr_scale: float = 1.0
) -> torch.optim.Optimizer:
    """The configured optimizer; with ``head``, the backbone learns ``backbone_lr_scale`` times slower."""
    groups = param_groups(
        model,
        config.lr,
        config.weight_decay,
        config.decay_norm_and_bias,
        head,
        backbone_lr_scale,
        config.norm_bias_lr_scale,
    )
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "rmsprop":
        # TF-style RMSprop of the MobileNet papers (eps inside the root, alpha 0.9).
        return torch.optim.RMSprop(groups, lr=config.lr, alpha=0.9, eps=0.0316, momentum=config.momentum)
    raise MobiforgeError(f"--optimizer must be sgd, adamw or rmsprop, got {config.optimizer!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A scheduler stepped once per iteration (so that warm-up is smooth and resuming mid-epoch is exact)."""
    total = max(1, epochs * steps_per_epoch)
    warmup = min(total - 1, round(config.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler
    if config.scheduler == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total)
    if config.scheduler == "step":
        main: sched.LRScheduler = sched.StepLR(optimizer, config.step_size * steps_per_epoch, config.gamma)
    elif config.scheduler == "cosine":
        floor = config.lr * config.min_lr_ratio
        main = sched.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=floor)
    elif config.scheduler == "none":
        main = sched.LambdaLR(optimizer, lambda _: 1.0)
    else:
        raise MobiforgeError(f"--scheduler must be step, cosine, onecycle or none, got {config.scheduler!r}")
    if warmup <= 0:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def rescheduled(
    optimizer: torch.optim.Optimizer,
    config: OptimConfig,
    base_lrs: list[float],
    epochs: int,
    steps_per_epoch: int,
    steps_done: int,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule of ``build_scheduler`` for a new epoch count, advanced to ``steps_done`` (a run re-planned once
    its first epoch was timed): the learning rate continues on the new curve from the step reached."""
    for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = lr  # schedulers start from the base rate; chained ones read the current one
        for key in ("initial_lr", "max_lr", "min_lr"):
            group.pop(key, None)
    with warnings.catch_warnings():  # replaying steps already taken, not skipping optimizer steps
        warnings.simplefilter("ignore", UserWarning)
        scheduler = build_scheduler(optimizer, config, epochs, steps_per_epoch)
        for _ in range(steps_done):
            scheduler.step()
    return scheduler


def build_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of the weights (BN buffers included), or ``None``."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions natively on this CPU (AVX512-BF16 or AMX) rather than emulating them."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto`` is bf16 on CUDA GPUs that support it, none on CPU. On an AVX512-BF16 CPU, bf16 autocast trained
    MobileNetV2 1.2-2.4x faster at 224 px but no faster at 32 px; on an AVX2 CPU, where bf16 is emulated, 6x slower.
    So on CPU it is opt-in (``bf16``), with a warning where the CPU lacks bf16."""
    if amp == "none":
        return None
    if amp == "bf16":
        if device.type == "cpu" and not cpu_has_native_bf16():
            warnings.warn(
                "--amp bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is emulated and training runs "
                "several times slower (0.16x measured on an AVX2 CPU); use --amp none",
                stacklevel=2,
            )
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise MobiforgeError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")
        return torch.float16
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    raise MobiforgeError(f"--amp must be auto, bf16, fp16 or none, got {amp!r}")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@dataclass
class EpochStats:
    loss: float
    images: int
    seconds: float
    steps: int
    loss_sum: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def set_bn_eval(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _batches(loader: Iterable[Any], skip: int) -> Iterator[Any]:
    for index, batch in enumerate(loader):
        if index >= skip:
            yield batch


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: LossFn,
    *,
    epoch: int = 0,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    ema: AveragedModel | None = None,
    clip_grad: float | None = None,
    channels_last: bool = False,
    batch_transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    frozen_bn: bool = False,
    start_step: int = 0,
    carried: tuple[float, int, float] = (0.0, 0, 0.0),
    progress: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EpochStats:
    """One pass over ``loader``; ``loss_fn(logits, targets, inputs, *extra)`` gives the loss (inputs for distillation,
    ``extra``: the tensors a batch carries after its targets, such as a teacher's cached logits).

    ``frozen_bn`` keeps BatchNorm layers in eval mode (running statistics fixed; for frozen pretrained backbones).
    ``start_step`` skips that many batches (a run resumed mid-epoch) and ``carried`` is the (loss sum, images,
    seconds) of the steps done before the interruption, so that the epoch's figures come out as if uninterrupted.
    ``should_stop`` is polled after every step (Ctrl-C); the returned ``steps`` says how far the epoch got.
    A non-finite loss raises ``DivergedError`` before the optimizer steps, so the weights are never corrupted.
    """
    device = torch.device(device)
    model.train()
    if frozen_bn:
        set_bn_eval(model)
    steps = len(loader) if hasattr(loader, "__len__") else 0  # type: ignore[arg-type]
    total_loss, images, carried_seconds = carried
    step = start_step
    start = time.perf_counter()
    task = TrainingTask(model, loss_fn)
    for images_batch, targets, *riding in _batches(loader, start_step):
        images_batch = images_batch.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        extra = [tensor.to(device, non_blocking=True) for tensor in riding]
        if channels_last:
            images_batch = images_batch.contiguous(memory_format=torch.channels_last)
        if batch_transform is not None:
            images_batch, targets = batch_transform(images_batch, targets)
        with autocast(device, amp_dtype):
            loss, _ = task(images_batch, targets, *extra)
        if not torch.isfinite(loss):
            raise DivergedError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        batch = images_batch.shape[0]
        total_loss += loss.item() * batch
        images += batch
        step += 1
        if progress is not None:
            elapsed = time.perf_counter() - start
            lr = optimizer.param_groups[0]["lr"]
            progress(StepInfo(epoch, step, steps, loss.item(), lr, (images - carried[1]) / elapsed if elapsed else 0.0))
        if should_stop is not None and should_stop():
            break
    return EpochStats(
        total_loss / max(1, images), images, carried_seconds + time.perf_counter() - start, step, total_loss
    )


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    images: int
    confusion: torch.Tensor  # [true, predicted] counts
    per_class: list[float] = field(default_factory=list)

    def to_dict(self, classes: list[str] | None = None) -> dict[str, Any]:
        names = classes or [str(i) for i in range(len(self.per_class))]
        return {
            "loss": self.loss,
            "top1": self.top1,
            "top5": self.top5,
            "images": self.images,
            "per_class_top1": dict(zip(names, self.per_class, strict=True)),
            "confusion": self.confusion.tolist(),
        }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    num_classes: int,
    *,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    distributed: bool = False,
) -> EvalResult:
    """Top-1/top-5 accuracy (in %), mean loss and the confusion matrix of ``model`` over ``loader``.

    With ``distributed``, each rank evaluates its own shard and the counts are summed across ranks, so every rank
    returns the figures of the whole set.
    """
    device = torch.device(device)
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    sums = torch.zeros(3, dtype=torch.float64)  # loss, top-5 hits, images
    for images_batch, targets, *_ in loader:  # what rides after the targets is for training's loss
        images_batch = images_batch.to(device, non_blocking=True)
        if channels_last:
            images_batch = images_batch.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = model(images_batch)
        logits, targets = logits.float().cpu(), targets.cpu()
        sums[0] += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(min(5, num_classes), dim=1).indices
        sums[1] += (top == targets[:, None]).any(dim=1).sum().item()
        sums[2] += targets.numel()
        confusion += torch.bincount(targets * num_classes + top[:, 0], minlength=num_classes**2).view(
            num_classes, num_classes
        )
    if distributed and dist.is_initialized():
        for tensor in (confusion, sums):
            reduced = tensor.to(_dist_device())
            dist.all_reduce(reduced)
            tensor.copy_(reduced.cpu())
    images = int(sums[2].item())
    if images == 0:
        raise MobiforgeError("evaluation set is empty")
    correct = confusion.diag()
    per_class_total = confusion.sum(dim=1)
    per_class = [
        100.0 * float(hit) / float(total) if total else math.nan
        for hit, total in zip(correct.tolist(), per_class_total.tolist(), strict=True)
    ]
    return EvalResult(
        loss=float(sums[0] / images),
        top1=100.0 * float(correct.sum()) / images,
        top5=100.0 * float(sums[1]) / images,
        images=images,
        confusion=confusion,
        per_class=per_class,
    )


def resolve_device(name: str) -> torch.device:
    """``--device``'s torch device, for training and the trunk's passes alike: auto is a GPU where there is one,
    else the CPU; under torchrun a GPU is the rank's own (LOCAL_RANK); cuda without one is a one-line error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise MobiforgeError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if device.index is None or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def join_process_group(backend: str, timeout: datetime.timedelta | None = None) -> None:
    """Join torchrun's process group, and leave it when the process exits: a gloo group still standing at
    interpreter shutdown can abort the process (SIGABRT, "terminate called without an active exception",
    pytorch/pytorch#190489) after a run that finished."""
    if dist.is_initialized():
        return
    dist.init_process_group(backend, **({"timeout": timeout} if timeout else {}))
    atexit.register(leave_process_group)


def leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _dist_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def cross_entropy_loss(
    label_smoothing: float = 0.0,
) -> LossFn:
    """Cross-entropy that also takes soft (mixup/cutmix) targets; the third argument (images) is unused."""
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor, _images: torch.Tensor) -> torch.Tensor:
        return criterion(logits.float(), targets)

    return loss_fn


def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], kept: nn.Module | None = None) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics from ``batches`` (forward passes in train mode, no
    gradients). After channels are removed, the next layers see sums over fewer inputs and the stored statistics no
    longer match (the eval-mode network can collapse to one class); fresh statistics restore much of the accuracy
    before any fine-tuning (measured on hymenoptera: 54% -> 61-66% for EfficientNet-Lite0 at half its channels)."""
    frozen = set(kept.modules()) if kept is not None else set()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in frozen]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over all the batches
    was_training = model.training
    model.train()
    if kept is not None:
        kept.eval()  # the kept blocks normalise with their own statistics, as they will in the deployed model
    with torch.no_grad():
        for images in batches:
            model(images)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return model.train(was_training)
