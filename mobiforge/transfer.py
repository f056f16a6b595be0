"""Transfer learning that fits a CPU budget: the frozen part of a network runs once per image and view, and only
its tail trains, on the cached activations (``train --trainable-blocks N``).

Where the network is cut: ``trainable_blocks=0`` trains the classifier alone (a linear probe on the pooled
features); ``N >= 1`` trains the last N entries of ``features`` (the head conv counts as one), their BatchNorm
included, and the classifier. The trunk before the cut is the expensive part of transfer; it runs once per (image,
view), in inference mode and channels_last, and its output is kept in fp16: ``views`` per training image (the
first the plain eval crop, the others the training augmentation, seeded per image and view) and one per val
image. Each epoch then costs only the tail's steps. A cache larger than the memory budget is not read into memory:
its chunk files are memory-mapped and each batch gathers its rows from them (``ChunkedRows``), so the disk, not
the memory, bounds the number of views.

The activations are written in chunks to ``RUN/cache/`` (or ``cache_dir``, which runs may share) under a key that
hashes the trunk's weights, the cut, the preprocessing and augmentation, the seed, the trunk's precision and the
files (paths, labels and the digest of their bytes, ``data.content_digests``: a photo repainted with its size and
mtime kept is a new photo); each view is a file of its own, so a run with more views reuses another's first ones. A
killed run resumes from the chunks it finished, and a cache of other weights, another resolution or other data is
never read (its key differs; a chunk whose stored key or checksum does not match is recomputed, with a warning).
Each row is named by its file's bytes, and its augmented views are seeded by them: when photos are added, removed
or moved to another class, the new file list's chunks take the rows of files already cached under the same recipe
from the old list's chunks, and only the new files' trunk passes are computed.
On CPUs with native bf16 (AVX512-BF16, AMX) the trunk runs in bf16 (``amp`` auto or bf16;
RESULTS.md#transfer_ladder_hymenoptera has the speed-up).

Distillation needs no teacher in the loop: the teacher's logits for every cached (image, view) are computed once,
from its own cached trunk (a teacher that is itself a cached tail run, such as ship's linear probe, reads its
trunk passes back from a shared cache) and the student's steps cost only the student.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import dataclasses
import functools
import hashlib
import json
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset

from mobiforge import engine
from mobiforge.checkpoint import Checkpoint, save_checkpoint
from mobiforge.config import TrainConfig
from mobiforge.data import (
    DataConfig,
    DatasetSplits,
    ImageSamples,
    Sample,
    check_images,
    content_digests,
    discover,
    eval_transform,
    memory_budget,
)
from mobiforge.data import train_transform as augmentation
from mobiforge.errors import MobiforgeError
from mobiforge.log import logger
from mobiforge.losses import kd_loss
from mobiforge.models.base import MobileClassifier, Preprocess, StackedNet
from mobiforge.progress import Reporter
from mobiforge.runs import (
    claim_run_dir,
    prepare_run_dir,
    starting_point,
    train_kind,
    write_config,
)
from mobiforge.trunk import TrunkPass, choose_trunk_pass, eager_pass, memo_path
from mobiforge.units import format_bytes

# 3: files keyed on their bytes, chunks carry a checksum; 4: rows named by file, views seeded so that any file list
# shares them; 5: the eval view decoded with the JPEG draft, as evaluation and export decode it
CACHE_VERSION = 5
CHUNK_IMAGES = 128  # images per cache file: what a killed run recomputes at most, per view
EXTRACT_BATCH = 32
DECODE_AHEAD = True  # decode the next batch on a thread while the trunk runs (RESULTS.md#trunk_pass_hymenoptera)
# The decode thread allocates each batch's images and the main thread frees them: glibc keeps the freed blocks in the
# thread's heap rather than give them back, and the heap grew by 150-300 KB per image, until 77,000 images of the
# battery's large folder took 23.8 GB of 24 (RESULTS.md#trunk_pass_memory). Each chunk ends with the freed pages
# given back (malloc_trim): the fastest of the ways measured to bound it.
CALIBRATION_BATCH, CALIBRATION_BATCHES = 16, 5  # an int8 trunk's: 64 images to calibrate on, 16 to check it on


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


class TrunkModule(nn.Module):
    """``trunk_output`` as a module: what an engine runs (and exports) for the cache pass."""

    def __init__(self, model: MobileClassifier, cut: int | None) -> None:
        super().__init__()
        self.model, self.cut = model, cut

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return trunk_output(self.model, self.cut, images)


def trunk_state(model: MobileClassifier, cut: int | None) -> dict[str, torch.Tensor]:
    if cut is None:
        classifier = {f"{model.classifier_attr}.{key}" for key in model.get_classifier().state_dict()}
        return {key: value for key, value in model.state_dict().items() if key not in classifier}
    return model.features[:cut].state_dict()


# ------------------------------------------------------------------------------------------------------ cache


@dataclass
class CachePlan:
    """What is cached: the key that names it, the transform of each view, the bytes it takes, the digest of the
    trunk's weights (hashed once, shared by the train and val caches) and the trunk pass's precision."""

    key: str
    transforms: list[Callable[[Any], Any]]
    item_shape: tuple[int, ...]
    images: int
    trunk: str = ""
    dtype: torch.dtype | None = None  # autocast dtype of the trunk pass (None: fp32)
    mapped: bool = False  # larger than the memory budget: the chunks are memory-mapped, not read in
    recipe: str = ""  # the key without the files: chunks of one recipe lend each other the rows of files they share
    draft_size: int | None = None  # the eval view's JPEG draft (``load_rgb``), as evaluation and export decode

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


def recipe_digest(
    trunk: str, cut: int | None, preprocess: Preprocess, data: DataConfig, seed: int, dtype: torch.dtype | None
) -> str:
    """A hash of everything one file's cached activations in one view depend on besides its bytes (``trunk``:
    ``trunk_digest`` of the weights). The number of views is not in it: view k is the same whatever the count, so
    runs share views."""
    recipe = {
        "version": CACHE_VERSION,
        "cut": cut,
        "preprocess": preprocess.to_dict(),
        "trunk": trunk,
        "seed": seed,
        "augmentation": _augmentation_settings(data),
        "dtype": str(dtype),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def cache_key(recipe: str, samples: list[Sample], folder: Path) -> str:
    """The recipe and the files in order (paths, labels and the digest of their bytes)."""
    digest = hashlib.sha256(recipe.encode())
    for (path, label), content in zip(samples, content_digests([path for path, _ in samples], folder), strict=True):
        digest.update(f"{path}|{label}|{content}\n".encode())
    return digest.hexdigest()


def row_ids(samples: list[Sample], folder: Path) -> list[int]:
    """Each file's name in the cache: 60 bits of the digest of its bytes, whatever its path, label or place in
    the list (a photo added to the folder, or one moved to another class, leaves the others' rows reusable). Its
    augmented views are seeded by it too."""
    return [int(content[:15], 16) for content in content_digests([path for path, _ in samples], folder)]


def eval_plan(
    train_plan: CachePlan, cut: int | None, preprocess: Preprocess, samples: list[Sample], folder: Path
) -> CachePlan:
    """The val cache: one plain eval crop per image, the same trunk."""
    recipe = recipe_digest(train_plan.trunk, cut, preprocess, DataConfig(), 0, train_plan.dtype)
    transforms = [eval_transform(preprocess)]
    key = cache_key(recipe, samples, folder)
    return dataclasses.replace(train_plan, key=key, transforms=transforms, images=len(samples), recipe=recipe)


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
    trunk_pass: TrunkPass | None = None,
) -> tuple[Rows, torch.Tensor]:
    """The trunk's fp16 outputs for every (view, image) of ``samples`` and their labels, view after view; read
    from ``folder`` where a chunk with this key exists, computed (and written) by ``trunk_pass`` (default: eager in
    the plan's precision) where not. The outputs are one tensor in memory, or ``ChunkedRows`` over the
    memory-mapped chunk files when the plan is ``mapped``."""
    trunk_pass = trunk_pass or eager_pass(TrunkModule(model, cut).eval(), plan.dtype)
    folder.mkdir(parents=True, exist_ok=True)
    rank, world = shard()
    outputs, labels = [], []
    computed = here = 0
    ids = row_ids(samples, folder)
    for view, transform in enumerate(plan.transforms):
        draft = plan.draft_size if view == 0 else None  # an augmented crop may zoom in: decoded in full
        dataset = ImageSamples(samples, transform, seed=seed, draft_size=draft, sample_ids=ids)
        dataset.set_epoch(view)
        spans = [
            range(start, min(start + CHUNK_IMAGES, len(samples))) for start in range(0, len(samples), CHUNK_IMAGES)
        ]
        # named by the key alone: a teacher pass over the same crops reads back another run's train chunks
        paths = [folder / f"{plan.recipe[:12]}-{plan.key[:24]}-v{view}-{n:05d}.pt" for n in range(len(spans))]
        chunks = [_read_chunk(path, plan.key, plan.mapped) for path in paths]
        # rows of this recipe and view cached for other file lists
        lenders = _lent_rows(folder, plan, view) if None in chunks else {}
        to_compute = [n for n, chunk in enumerate(chunks) if chunk is None]
        mine = [n for n in to_compute if n % world == rank]  # under torchrun, each rank computes its share
        missing = [index for n in mine for index in spans[n] if ids[index] not in lenders]
        fresh = _trunk_rows(trunk_pass, Subset(dataset, missing))  # one pipeline over every chunk to compute
        for n in mine:
            chunk = {"key": plan.key, "recipe": plan.recipe, **_assemble_chunk(fresh, dataset, spans[n], ids, lenders)}
            save_checkpoint({**chunk, "checksum": chunk_checksum(chunk)}, paths[n])
            release_freed_memory()  # the decoded images' pages (see RESULTS.md#trunk_pass_memory)
            # mapped: keep the file's pages, not the computed copy: memory holds one chunk at a time
            chunks[n] = (_read_chunk(paths[n], plan.key, mapped=True) if plan.mapped else None) or chunk
        fresh.close()  # its decoding thread ends
        if world > 1:
            chunks = _other_ranks_chunks(chunks, paths, plan, world)
        outputs.extend(chunk["features"] for chunk in chunks)
        labels.extend(chunk["labels"] for chunk in chunks)
        here += len(missing)
        computed += sum(1 for n in to_compute for index in spans[n] if ids[index] not in lenders)
    reused = len(samples) * len(plan.transforms) - computed
    held = f"memory-mapped from {folder}" if plan.mapped else "in memory"
    ranks = f"; {here} on this rank of {world}" if world > 1 else ""
    reporter.message(
        f"{split} cache: {computed} trunk passes computed ({trunk_pass.label}{ranks}), {reused} read back "
        f"({plan.bytes / 2**20:.1f} MiB, fp16, {held})"
    )
    return (ChunkedRows(outputs) if plan.mapped else torch.cat(outputs)), torch.cat(labels)


_SHARED = contextvars.ContextVar("shared", default=True)  # False: rank 0 works alone (``alone``)


def shard() -> tuple[int, int]:
    """This process's rank and the number of ranks: under ``torchrun`` the process group's, else (0, 1)."""
    if dist.is_available() and dist.is_initialized() and _SHARED.get():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def alone(shared: bool = False) -> Iterator[None]:
    """Trunk passes in this block run in this process alone, even under ``torchrun`` (``shared=True``: across the
    ranks again). ``ship`` leads its ranks from rank 0: the others join its training runs only, so its own passes
    (the data-health checks, the learning curve) must not wait for them."""
    token = _SHARED.set(shared)
    try:
        yield
    finally:
        _SHARED.reset(token)


def _other_ranks_chunks(
    chunks: list[dict[str, Any] | None], paths: list[Path], plan: CachePlan, world: int
) -> list[dict[str, Any]]:
    """After every rank has written its chunks (a barrier every rank reaches once per view), the chunks the others
    wrote, read back from the shared folder and checked."""
    dist.barrier()
    read = []
    for n, (chunk, path) in enumerate(zip(chunks, paths, strict=True)):
        chunk = chunk or _read_chunk(path, plan.key, plan.mapped)
        if chunk is None:
            raise MobiforgeError(
                f"{path}: rank {n % world} did not write its chunk of the feature cache (is the cache folder shared by "
                "every rank?); run the same command again: it resumes from the chunks written"
            )
        read.append(chunk)
    return read


class ChunkedRows:
    """The rows of many chunk tensors read as one, without concatenating them: indexing with a batch of row
    numbers gathers them chunk by chunk. Over memory-mapped chunks, only the pages of the rows read come in."""

    def __init__(self, chunks: list[torch.Tensor]) -> None:
        self.chunks = chunks
        self.starts = torch.tensor([0, *[len(chunk) for chunk in chunks]]).cumsum(0)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> torch.Size:
        return torch.Size([len(self), *self.chunks[0].shape[1:]])

    def __getitem__(self, rows: Sequence[int] | torch.Tensor) -> torch.Tensor:
        rows = torch.as_tensor(rows, dtype=torch.long)
        which = torch.searchsorted(self.starts, rows, right=True) - 1
        out = torch.empty((len(rows), *self.chunks[0].shape[1:]), dtype=self.chunks[0].dtype)
        for chunk in which.unique().tolist():
            picked = (which == chunk).nonzero().squeeze(1)
            out[picked] = self.chunks[chunk][rows[picked] - self.starts[chunk]]
        return out

    def parts(self, size: int) -> list[torch.Tensor]:
        """The rows in order, in pieces of at most ``size``."""
        return [piece for chunk in self.chunks for piece in chunk.split(size)]


Rows = torch.Tensor | ChunkedRows


def _read_chunk(path: Path, key: str | None, mapped: bool = False) -> dict[str, Any] | None:
    """The chunk at ``path`` when it holds ``key``'s rows (any key: None) and its checksum matches, else None."""
    if not path.exists():
        return None
    try:
        chunk = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except Exception as error:  # a chunk cut short by a crash, or damaged: compute it again
        warnings.warn(f"{path}: unreadable cache chunk ({type(error).__name__}); computing it again", stacklevel=3)
        return None
    if not isinstance(chunk, dict) or (key is not None and chunk.get("key") != key):
        warnings.warn(f"{path} was cached for other weights, data or settings; computing it again", stacklevel=3)
        return None
    if not _intact(chunk):  # overwritten bytes load without an error: they are caught here
        warnings.warn(f"{path}: damaged cache chunk (its checksum differs); computing it again", stacklevel=3)
        return None
    return chunk


CHUNK_TENSORS = ("features", "labels", "rows")


def _intact(chunk: dict[str, Any]) -> bool:
    return all(isinstance(chunk.get(name), torch.Tensor) for name in CHUNK_TENSORS) and chunk.get(
        "checksum"
    ) == chunk_checksum(chunk)


def chunk_checksum(chunk: dict[str, Any]) -> str:
    """BLAKE2b of a chunk's features, labels and row names, as stored."""
    hasher = hashlib.blake2b(digest_size=16)
    for name in CHUNK_TENSORS:
        tensor = chunk[name].contiguous()
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def _lent_rows(folder: Path, plan: CachePlan, view: int) -> dict[int, torch.Tensor]:
    """The cached rows of this recipe and view under other keys (other file lists), by file: features computed
    once are not computed again when photos are added, removed or moved between classes. Chunks are memory-mapped
    and their checksums checked."""
    rows: dict[int, torch.Tensor] = {}
    for path in sorted(folder.glob(f"{plan.recipe[:12]}-*-v{view}-*.pt")):
        if path.name.startswith(f"{plan.recipe[:12]}-{plan.key[:24]}-"):
            continue  # this list's own chunks: read in place, or missing
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # another list's damaged chunk only lends nothing
            chunk = _read_chunk(path, None, mapped=True)
        if chunk is not None and chunk.get("recipe") == plan.recipe:
            rows.update(zip(chunk["rows"].tolist(), chunk["features"], strict=True))
    return rows


def _assemble_chunk(
    fresh: Iterator[torch.Tensor], dataset: ImageSamples, span: range, ids: list[int], lent: dict[int, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The chunk of the images in ``span``: rows lent by other chunks where they hold the file, the next rows of
    ``fresh`` for the rest."""
    features = torch.stack([lent[ids[index]] if ids[index] in lent else next(fresh) for index in span])
    labels = torch.tensor([dataset.samples[index][1] for index in span])
    rows = torch.tensor([ids[index] for index in span], dtype=torch.long)
    return {"features": features.contiguous(), "labels": labels, "rows": rows}


def release_freed_memory() -> bool:
    """Give the system back the heap pages freed so far (glibc's ``malloc_trim``); False where the C library is not
    glibc (musl, macOS, Windows: another allocator, and not this heap)."""
    try:
        return bool(_libc().malloc_trim(0))
    except (AttributeError, OSError, TypeError):  # no malloc_trim; no C library to load by None (Windows)
        return False


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(None)


def _trunk_rows(trunk_pass: TrunkPass, dataset: Subset) -> Iterator[torch.Tensor]:
    """The trunk's fp16 rows of ``dataset``, one image at a time, computed a batch at a time. With ``DECODE_AHEAD``
    and ONNX Runtime each batch is decoded on a thread while the trunk runs on the one before (both release the
    GIL), so decoding fills the gaps its threads leave. Not beside eager PyTorch: its ops and the decode's resize then
    share one thread pool, and the pass ran slower (RESULTS.md#trunk_pass_cifar10, "after: eager bf16")."""
    batches = iter(DataLoader(dataset, batch_size=EXTRACT_BATCH))
    ahead = DECODE_AHEAD and trunk_pass.engine != "eager"
    with ThreadPoolExecutor(1, thread_name_prefix="mobiforge-decode") as decoder:
        upcoming = decoder.submit(next, batches, None) if ahead else None
        while (batch := upcoming.result() if upcoming else next(batches, None)) is not None:
            upcoming = decoder.submit(next, batches, None) if ahead else None
            yield from trunk_pass.run(batch[0]).to(torch.float16).contiguous()


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
    dtype: torch.dtype | None = None,
    trunk: str | None = None,
) -> CachePlan:
    """The training cache's plan, with as many views as fit on disk (fewer with a warning; a one-line error
    naming the size when not even one does), memory-mapped when they do not fit in the memory budget."""
    with torch.inference_mode():
        example = torch.zeros(1, 3, preprocess.img_size, preprocess.img_size)
        item_shape = tuple(trunk_output(model, cut, example).shape[1:])
    transforms = [eval_transform(preprocess), *[augmentation(data)] * (views - 1)]
    per_view = CachePlan("", [eval_transform(preprocess)], item_shape, len(samples) + val_images).bytes
    folder.mkdir(parents=True, exist_ok=True)
    room = disk_room(folder)
    fitting = min(views, room // max(per_view, 1))
    if fitting < 1:
        raise MobiforgeError(
            f"the feature cache needs {format_bytes(per_view)} for one view of {len(samples)} images "
            f"(trunk output {list(item_shape)} in fp16); {format_bytes(shutil.disk_usage(folder).free)} is free on "
            f"disk at {folder}, of which the cache may take half ({format_bytes(room)}); free "
            "disk space, pass --cache-dir on a larger disk, or train more blocks (a smaller output)"
        )
    if fitting < views:
        warnings.warn(f"the feature cache holds {fitting} of the {views} views asked for (disk)", stacklevel=2)
        transforms = transforms[:fitting]
    trunk = trunk or trunk_digest(model, cut)
    recipe = recipe_digest(trunk, cut, preprocess, data, seed, dtype)
    mapped = fitting * per_view > memory_budget()
    return CachePlan(
        cache_key(recipe, samples, folder), transforms, item_shape, len(samples), trunk, dtype, mapped, recipe,
        preprocess.resize_size,
    )  # fmt: skip


def disk_room(folder: Path) -> int:
    """Bytes the cache may take on the disk of ``folder``: half of what is free, the rest left to the run."""
    return shutil.disk_usage(folder).free // 2


# ------------------------------------------------------------------------------------------------ the teacher


def teacher_cut(checkpoint: Checkpoint, teacher: MobileClassifier) -> int | None:
    """Where a teacher's own frozen trunk ends: a cached tail run's cut (its trunk passes may be cached already),
    else the pooled features (one pass of the whole network)."""
    blocks = (checkpoint.extra.get("transfer") or {}).get("trainable_blocks")
    return cut_index(teacher, blocks) if blocks else None


def cached_teacher_logits(
    config: TrainConfig,
    samples: list[Sample],
    classes: list[str],
    plan: CachePlan,
    preprocess: Preprocess,
    folder: Path,
    reporter: Reporter,
) -> torch.Tensor:
    """The teacher's logits for every (view, image) of the student's training cache, in its order: the teacher's
    trunk on the same crops (cached in ``folder`` too), then its tail. The teacher's trunk runs on its own engine,
    the one recorded when its own run cached it: its passes are then read back, not computed again in the
    student's precision."""
    assert config.distill is not None
    checkpoint = Checkpoint.load(config.distill.teacher)
    checkpoint.require_classes(classes, "teacher", "fine-tune the teacher on this data first")
    if checkpoint.preprocess.to_dict() != preprocess.to_dict():
        raise MobiforgeError(
            f"distilling with --trainable-blocks needs the teacher's input size and normalisation "
            f"({checkpoint.preprocess.img_size} px), got the student's {preprocess.img_size} px or another "
            "normalisation; start the student from the teacher's weights, or train without --trainable-blocks"
        )
    teacher = checkpoint.model().to(memory_format=torch.channels_last)
    cut = teacher_cut(checkpoint, teacher)
    views = len(plan.transforms)
    trunk_pass, digest = _trunk_pass(config, teacher, cut, preprocess, len(samples) * views, folder, samples)
    teacher_plan = plan_cache(
        teacher, cut, preprocess, config.data, views, config.seed, samples, folder, 0, trunk_pass.dtype, digest
    )
    if len(teacher_plan.transforms) < views:  # the teacher's trunk output is larger than the student's
        raise MobiforgeError(
            f"the teacher's cached features fit {len(teacher_plan.transforms)} of the student's {views} views; "
            f"use --views {len(teacher_plan.transforms)}"
        )
    trunk, _ = cached_activations(
        teacher, cut, samples, teacher_plan, folder, "teacher", config.seed, reporter, trunk_pass
    )
    head = Tail(teacher, cut).eval()
    parts = trunk.parts(256) if isinstance(trunk, ChunkedRows) else trunk.split(256)
    with torch.inference_mode():
        return torch.cat([head(part.float()) for part in parts])


# ---------------------------------------------------------------------------------------------------- training


def _check(config: TrainConfig) -> None:
    if config.trainable_blocks is None:
        raise MobiforgeError("a cached tail run needs --trainable-blocks")
    unsupported = [
        (config.resume, "--resume (a cached run retrains its tail in seconds: run the same command again)"),
        (config.distill and config.distill.feature_weight, "--feature-weight with --trainable-blocks"),
        (config.freeze_epochs, "--freeze-epochs with --trainable-blocks (the trunk is frozen already)"),
    ]
    for given, what in unsupported:
        if given:
            raise MobiforgeError(f"{what} is not supported")


@dataclass
class TailData:
    """The cached tensors a tail trains on: trunk outputs and labels, and the teacher's logits when distilling (they
    ride in each batch, after the labels, to the loss)."""

    train: tuple[Rows, ...]
    val: tuple[Rows, torch.Tensor]


@dataclass
class CachedTail:
    """A cached tail run, set up for ``train.Trainer``: the whole network (what its checkpoints hold), the tail that
    trains, the classes and splits, the run folder, and the cached tensors the tail trains on."""

    config: TrainConfig
    model: MobileClassifier
    tail: Tail
    classes: list[str]
    splits: DatasetSplits
    run_dir: Path
    data: TailData
    trunk_pass: str = ""  # what computed the cache (``TrunkPass.label``), for the record
    cached_views: int | None = None  # the views the cache holds: fewer than asked where the disk could not hold them

    def loaders(self) -> tuple[Iterable[tuple[torch.Tensor, ...]], Iterable[tuple[torch.Tensor, ...]]]:
        """Batches of the cached rows as float32: training ones shuffled by the run's seed, then the val ones."""
        generator = torch.Generator().manual_seed(self.config.seed)
        batch, images = self.config.data.batch_size, len(self.data.train[0])
        train = _Float(_batches(self.data.train, batch, generator, drop_last=images > batch))
        return train, _Float(_batches(self.data.val, 256))

    def loss(self) -> engine.LossFn:
        """Cross-entropy, or with a teacher the distillation loss against the batch's cached teacher logits."""
        hard = engine.cross_entropy_loss(self.config.optim.label_smoothing)
        distill = self.config.distill
        if distill is None:
            return hard

        def loss(logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor, teacher: torch.Tensor) -> Any:
            soft = kd_loss(logits, teacher, distill.temperature)
            return (1 - distill.alpha) * hard(logits, targets, features) + distill.alpha * soft

        return loss

    def checkpoint_extra(self) -> dict[str, Any]:
        return {
            "transfer": {
                "trainable_blocks": self.config.trainable_blocks,
                "views": self.cached_views or self.config.views,
                "views_asked": self.config.views,
                "images": len(self.splits.train),
                "trunk_pass": self.trunk_pass,
            }
        }


def prepare_tail(config: TrainConfig, reporter: Reporter) -> CachedTail:
    """Everything a cached tail run trains from (see the module docstring): the starting network cut at
    ``trainable_blocks``, its run folder, and the trunk's outputs (and a teacher's logits) for every cached view."""
    _check(config)
    splits = discover(config.data)
    start = starting_point(config, splits.classes)
    config, model, preprocess = start.config, start.model.eval(), start.preprocess
    cut = cut_index(model, config.trainable_blocks or 0)
    splits = check_images(splits, config.data.skip_bad_images)
    run_dir = prepare_run_dir(config, None)
    if shard()[0] == 0:  # under torchrun the ranks share the cache pass; rank 0 owns the folder
        claim_run_dir(run_dir, train_kind(config))
        write_config(run_dir, config)
    model.to(memory_format=torch.channels_last)
    folder = Path(config.cache_dir) if config.cache_dir else run_dir / "cache"
    trunk_pass, digest = _trunk_pass(
        config, model, cut, preprocess, len(splits.train) * config.views + len(splits.val), folder, splits.train
    )
    plan = plan_cache(model, cut, preprocess, config.data, config.views, config.seed, splits.train, folder, len(
        splits.val), trunk_pass.dtype, digest)  # fmt: skip
    started = time.time()
    train_x, train_y = cached_activations(
        model, cut, splits.train, plan, folder, "train", config.seed, reporter, trunk_pass
    )
    val_plan = eval_plan(plan, cut, preprocess, splits.val, folder)
    val_x, val_y = cached_activations(model, cut, splits.val, val_plan, folder, "val", 0, reporter, trunk_pass)
    teacher = ()
    if config.distill:
        teacher = (cached_teacher_logits(config, splits.train, splits.classes, plan, preprocess, folder, reporter),)
    logger.debug("feature cache ready in %.1f s: train %s, val %s", time.time() - started, train_x.shape, val_x.shape)
    data = tail_data((train_x, train_y, *teacher), (val_x, val_y))
    return CachedTail(
        config, model, Tail(model, cut), splits.classes, splits, run_dir, data, trunk_pass.label, len(plan.transforms)
    )


def tail_data(train: tuple[Rows, ...], val: tuple[Rows, torch.Tensor]) -> TailData:
    """The cached tensors of a tail run (a seam for tests: what the tail trains on)."""
    return TailData(train, val)


def _trunk_pass(
    config: TrainConfig, model: MobileClassifier, cut: int | None, preprocess: Preprocess, passes: int, folder: Path,
    samples: list[Sample],
) -> tuple[TrunkPass, str]:  # fmt: skip
    """The engine of this run's trunk passes (``--trunk-engine``, on ``--device``), and the trunk's digest
    (``trunk_pass_for``)."""
    device = engine.resolve_device(config.device)
    return trunk_pass_for(model, cut, preprocess, config.trunk_engine, config.amp, passes, folder, samples, device)


def trunk_pass_for(
    model: MobileClassifier,
    cut: int | None,
    preprocess: Preprocess,
    engine_name: str,
    amp: str,
    passes: int,
    folder: Path,
    samples: list[Sample],
    device: torch.device | None = None,
) -> tuple[TrunkPass, str]:
    """The engine of ``passes`` trunk passes over ``samples`` (``trunk.choose_trunk_pass``, on ``device``; an int8 trunk
    is calibrated on their eval crops), and the digest the cache key takes: the trunk's weights, and what else the
    pass's outputs depend on (an int8 trunk's calibration)."""
    digest = trunk_digest(model, cut)
    memo = memo_path(folder, digest, cut, preprocess.img_size, amp)
    trunk = TrunkModule(model, cut).eval()
    calibration = functools.cache(functools.partial(calibration_batches, samples, preprocess))
    rank, world = shard()
    if world > 1 and rank > 0:  # under torchrun, rank 0 chooses (and records); the others read its choice back
        dist.barrier()
        passes = 0  # never a trial of their own: what rank 0 left unrecorded is eager for every rank
    trunk_pass = choose_trunk_pass(trunk, preprocess.img_size, engine_name, amp, passes, memo, calibration, device)
    if world > 1 and rank == 0:
        dist.barrier()
    return trunk_pass, digest + (f"|{trunk_pass.variant}" if trunk_pass.variant else "")


def calibration_batches(samples: list[Sample], preprocess: Preprocess) -> list[torch.Tensor]:
    """``CALIBRATION_BATCHES`` batches of eval crops of ``samples``, spread over the list by a fixed stride (a folder
    lists its files class by class), for an int8 trunk to read its activations' ranges on; the last is held out."""
    count = min(len(samples), CALIBRATION_BATCHES * CALIBRATION_BATCH)
    picked = [samples[round(i * len(samples) / count)] for i in range(count)] if count else []
    dataset = ImageSamples(picked, eval_transform(preprocess))
    images = [dataset[index][0] for index in range(len(picked))]
    return [torch.stack(images[i : i + CALIBRATION_BATCH]) for i in range(0, len(images), CALIBRATION_BATCH)]


class _CachedRows(Dataset):
    """Cached tensors indexed a batch at a time: one gather per batch, not one per row (a memory-mapped cache
    reads each chunk's rows of the batch together)."""

    def __init__(self, tensors: Sequence[Rows]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, ...]:
        return tuple(tensor[rows] for tensor in self.tensors)


def _batches(
    tensors: Sequence[Rows], batch: int, shuffle: torch.Generator | None = None, drop_last: bool = False
) -> DataLoader:
    """Batches of rows of ``tensors``, in the order a ``DataLoader(shuffle=True, generator=shuffle)`` draws."""
    rows = _CachedRows(tensors)
    order = RandomSampler(rows, generator=shuffle) if shuffle is not None else SequentialSampler(rows)
    return DataLoader(rows, sampler=BatchSampler(order, batch, drop_last), batch_size=None)


class _Float:
    """Batches of the fp16 cache as float32 (the tail trains and is evaluated in fp32), the teacher's cached logits,
    when there are any, riding after the labels."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        for features, labels, *teacher in self.loader:
            yield features.float(), labels, *(logits.float() for logits in teacher)
