"""Caches: small datasets decoded once into memory (the deterministic transform steps run in the same pass that
checks every file), and digests of files' bytes for the caches on disk (the trunk features)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from mobiforge.config import DataConfig
from mobiforge.data.discovery import DatasetSplits
from mobiforge.data.images import load_rgb
from mobiforge.data.scan import find_bad_images, report_bad
from mobiforge.data.transforms import eval_stages, train_stages
from mobiforge.errors import MobiforgeError
from mobiforge.files import write_atomic
from mobiforge.models.base import Preprocess


@dataclass
class CacheSpec:
    """How one split is kept in memory: the deterministic transform steps, run once on the decoded image."""

    prepare: Callable[[Any], torch.Tensor]
    draft_size: int | None = None


def cache_specs(config: DataConfig, preprocess: Preprocess) -> tuple[CacheSpec, CacheSpec]:
    """The train and val splits' deterministic steps, for ``check_images(cache=...)``."""
    train_prepare = v2.Compose(train_stages(config, cached=True)[0])
    return (
        CacheSpec(train_prepare, 2 * config.resolved_img_size()),
        CacheSpec(v2.Compose(eval_stages(preprocess)[0]), preprocess.resize_size),
    )


def memory_budget() -> int:
    """Bytes of decoded images ``cache="auto"`` may keep: a quarter of the machine's memory, at most 4 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return min(4 * 2**30, total // 4)


def _decode_prepared(path: str, spec: CacheSpec) -> tuple[torch.Tensor | None, str | None]:
    try:
        if os.path.getsize(path) == 0:
            return None, "empty file"
        image = spec.prepare(load_rgb(path, spec.draft_size))  # convert() decodes fully: truncation raises
    except Exception as error:
        return None, str(error).splitlines()[0] if str(error) else type(error).__name__
    return image.as_subclass(torch.Tensor).contiguous(), None


def decode_into_memory(
    paths: Sequence[str], spec: CacheSpec, budget: int, threads: int = 4
) -> tuple[dict[str, torch.Tensor] | None, dict[str, str]]:
    """Decode and prepare every image (the bad-file scan in the same pass). Returns the uint8 tensors by path, or
    None once they pass ``budget`` bytes (the remaining files are then only checked), and the bad files."""
    images: dict[str, torch.Tensor] = {}
    bad: dict[str, str] = {}
    used, checked = 0, len(paths)
    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL and torch release the GIL while resizing
        for start in range(0, len(paths), 256):  # chunks: memory is checked before more is decoded
            chunk = paths[start : start + 256]
            for path, (tensor, problem) in zip(
                chunk, pool.map(_decode_prepared, chunk, [spec] * len(chunk)), strict=True
            ):
                if problem is not None:
                    bad[path] = problem
                elif tensor is not None:
                    images[path] = tensor
                    used += tensor.numel()
            if used > budget:
                checked = start + len(chunk)
                break
    if used > budget:  # the files after the chunk that passed the budget are only checked
        bad.update(find_bad_images(paths[checked:], threads))
        return None, bad
    return images, bad


def check_images(
    splits: DatasetSplits,
    skip_bad: bool,
    cache: tuple[CacheSpec, CacheSpec] | None = None,
    budget: int | None = None,
) -> DatasetSplits:
    """Scan both splits before training starts (see ``decodable``); an emptied split is an error.

    With ``cache`` (the train and val splits' deterministic steps), every image is also kept decoded and prepared
    in ``splits.images``, unless together they pass ``budget`` bytes (then ``splits.images`` stays None)."""
    if cache is None:
        bad = find_bad_images([path for path, _ in splits.train + splits.val])
    else:
        budget = memory_budget() if budget is None else budget
        train_images, bad = decode_into_memory([path for path, _ in splits.train], cache[0], budget)
        val_paths = [path for path, _ in splits.val]
        if train_images is None:  # over budget already: the val split is only checked
            bad.update(find_bad_images(val_paths))
            splits.images = None
        else:
            used = sum(t.numel() for t in train_images.values())
            val_images, val_bad = decode_into_memory(val_paths, cache[1], budget - used)
            bad.update(val_bad)
            splits.images = {**train_images, **val_images} if val_images is not None else None
    dropped = report_bad(bad, skip_bad)
    if dropped:
        splits.train = [s for s in splits.train if s[0] not in dropped]
        splits.val = [s for s in splits.val if s[0] not in dropped]
        for name, split in (("train", splits.train), ("val", splits.val)):
            if not split:
                raise MobiforgeError(f"the {name} split has no decodable images left")
    return splits


DIGESTS_FILE = "file-digests.json"  # in a cache folder: the digests of the files it cached, by path and stat


def content_digests(paths: Sequence[str], folder: Path) -> list[str]:
    """A digest of each file's bytes (BLAKE2b, 128 bits), for caches keyed on what the pixels are, not on a path
    and a modification time (a repainted photo kept its size and mtime, and its stale features were served). Each
    is remembered with the file's size, mtime, ctime and inode: any write changes the ctime, which no user can
    set back, so a file whose stat is unchanged is not read again (the memo: ``folder / DIGESTS_FILE``)."""
    memo_path = folder / DIGESTS_FILE
    try:
        memo = json.loads(memo_path.read_text())
        memo = memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        memo = {}
    digests, changed = [], False
    for path in paths:
        stat = os.stat(path)
        signature = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        known = memo.get(path)
        if not (isinstance(known, list) and known[:4] == signature):
            known, changed = [*signature, _file_digest(path)], True
            memo[path] = known
        digests.append(str(known[4]))
    if changed:
        with contextlib.suppress(MobiforgeError):  # a read-only home: the digests are read again next time
            write_atomic(memo_path, json.dumps(memo))
    return digests


def _file_digest(path: str) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()
