"""The dataset of (path, label) samples, its augmentation seeded per sample so that a resumed run, or one with
another number of loader workers, sees the very same images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from mobiforge.data.discovery import Sample
from mobiforge.data.images import load_image


class ImageSamples(Dataset):
    """(path, label) samples with a transform; ``set_epoch`` re-seeds the per-sample augmentation (seeded by the
    sample's index, or by its entry in ``sample_ids``: the feature cache names files by their bytes). With ``images``
    (prepared uint8 tensors by path, see ``check_images``) nothing is read from disk and ``transform`` is only the
    random part of the recipe."""

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Any], Any],
        seed: int = 0,
        draft_size: int | None = None,
        images: dict[str, torch.Tensor] | None = None,
        sample_ids: Sequence[int] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.sample_ids = sample_ids  # what seeds each sample's augmentation (default: its index)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.draft_size = draft_size
        self.images = images

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = tv_tensors.Image(self.images[path]) if self.images is not None else load_image(path, self.draft_size)
        # Seeding per sample makes augmentation independent of worker count and of where a resumed run restarts.
        # (The CPU generator alone: torch.manual_seed also seeds every accelerator, ~150 us a call here.)
        sample = index if self.sample_ids is None else self.sample_ids[index]
        sample_seed = hash((self.seed, self.epoch, sample)) & 0x7FFF_FFFF_FFFF_FFFF
        if torch.utils.data.get_worker_info() is not None:
            torch.default_generator.manual_seed(sample_seed)  # a worker's RNG serves only augmentation
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):  # in the main process, leave the training RNG (dropout) alone
            torch.default_generator.manual_seed(sample_seed)
            return self.transform(image), label
