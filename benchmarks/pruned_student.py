"""How ship's pruned student should be pruned: each way of pruning the ImageNet teacher into the size budget, scored
by how well a linear probe separates the data on the pruned network's features, before any training.

Ship's pruned student is the teacher (EfficientNet-Lite0 with its linear probe) pruned until its int8 weights fit,
then trained for a few minutes. On hymenoptera that training moves the val top-1 little (it stood at 91-92% from
its first epoch while the teacher's probe had 95%), so what pruning keeps of the ImageNet features bounds the
student. This measures it directly, for every pruning variant: prune as ship does (same size target, same BatchNorm
re-estimation), then fit a probe on the pooled features of the train images and score it on val.

    python -m benchmarks.pruned_student --data ../shared/datasets/hymenoptera [--section pruned_student_hymenoptera]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.results import write_section
from mobiforge.checkpoint import Checkpoint
from mobiforge.data import DataConfig, ImageSamples, discover, eval_transform
from mobiforge.models import create_model
from mobiforge.profile import int8_weight_bytes
from mobiforge.prune import prune_and_save, prune_model, ratio_for_target, taylor_gradients
from mobiforge.ship.policy import FILE_OVERHEAD, PRUNING
from mobiforge.ship.search import kept_blocks

TEACHER = "efficientnet_lite0"


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    importance: str = "l1"
    global_pruning: bool = False
    keep: str = "ship"  # "ship": ship's kept_blocks rule; else a block count


VARIANTS = (
    Variant("l1, uniform, first blocks kept (ship today)"),
    Variant("l1, global, first blocks kept", global_pruning=True),
    Variant("taylor, uniform, first blocks kept", importance="taylor"),
    Variant("taylor, global, first blocks kept", importance="taylor", global_pruning=True),
    Variant("l1, uniform, nothing kept", keep="0"),
    Variant("taylor, global, nothing kept", importance="taylor", global_pruning=True, keep="0"),
)


def pooled(model: nn.Module, samples: list, preprocess, flips: bool) -> torch.Tensor:
    """Pre-logit features of every sample (and of its mirror image with ``flips``), eval mode."""
    loader = torch.utils.data.DataLoader(ImageSamples(samples, eval_transform(preprocess)), batch_size=32)
    rows = []
    with torch.inference_mode():
        for images, _ in loader:
            batches = [images, images.flip(-1)] if flips else [images]
            rows += [model.forward_head(model.forward_features(batch), pre_logits=True) for batch in batches]
    return torch.cat(rows)


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, weight_decay: float = 1e-3) -> nn.Linear:
    """A softmax regression on standardised features, full batch (L-BFGS): the same fit for every variant."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    linear = nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=200, line_search_fn="strong_wolfe")
    z = (x - mean) / std

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(z), y) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():  # folded back onto the raw features
        linear.weight.div_(std)
        linear.bias.sub_((linear.weight * mean).sum(1))
    return linear


def probe_top1(model: nn.Module, splits, preprocess) -> tuple[float, nn.Linear]:
    train_x = pooled(model, splits.train, preprocess, flips=True)
    probe = fit_probe(train_x.float(), _pairs(splits.train), len(splits.classes))
    val_x = pooled(model, splits.val, preprocess, flips=False)
    val_y = torch.tensor([label for _, label in splits.val])
    with torch.no_grad():
        return 100.0 * (probe(val_x.float()).argmax(1) == val_y).float().mean().item(), probe


def _pairs(samples: list) -> torch.Tensor:
    """Labels in ``pooled``'s order with flips: each batch of 32 images, then the same batch mirrored."""
    labels = torch.tensor([label for _, label in samples])
    return torch.cat([torch.cat([chunk, chunk]) for chunk in labels.split(32)])


def teacher_checkpoint(splits, data: str, folder: Path) -> tuple[Checkpoint, float]:
    """The ImageNet teacher with a probe fitted on this data as its classifier (what ship's linear probe is)."""
    model = create_model(TEACHER, pretrained=True, num_classes=len(splits.classes)).eval()
    top1, probe = probe_top1(model, splits, model.preprocess)
    linear = [m for m in model.get_classifier().modules() if isinstance(m, nn.Linear)][-1]
    linear.load_state_dict(probe.state_dict())
    checkpoint = Checkpoint.of(model, classes=splits.classes, preprocess=model.preprocess, epoch=0,
                               config={"data": {"data": data}})  # fmt: skip
    checkpoint.save(folder / "teacher.pt")
    print(f"teacher (ImageNet {TEACHER}, probe): val top-1 {top1:.2f}%")
    return Checkpoint.load(folder / "teacher.pt"), top1


def prune_variant(teacher: Checkpoint, variant: Variant, target: int, data: DataConfig, folder: Path):
    size = teacher.preprocess.img_size
    keep = kept_blocks(teacher.model(), target) if variant.keep == "ship" else int(variant.keep)
    config = dataclasses.replace(PRUNING, importance=variant.importance, global_pruning=variant.global_pruning,
                                 keep_blocks=keep)  # fmt: skip
    gradients = taylor_gradients(teacher, data, 4) if variant.importance == "taylor" else None
    example = torch.randn(1, 3, size, size)

    def prune(model: nn.Module) -> float:
        ratio = ratio_for_target(model, example, config, int8_weight_bytes, target, gradients)
        prune_model(model, example, config, ratio, gradients)
        return ratio

    path = folder / f"pruned-{VARIANTS.index(variant)}.pt"
    pruned, ratio = prune_and_save(teacher, prune, data, 512, 0, path, {"variant": variant.name}, keep)
    return pruned, ratio, keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--max-size", type=int, default=1_000_000, help="ship's size budget in bytes")
    parser.add_argument("--variants", default=None, help="comma-separated indices into VARIANTS (default: all)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pruned-student"))
    parser.add_argument("--section", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    args.work.mkdir(parents=True, exist_ok=True)
    data = DataConfig(data=args.data)
    splits = discover(data)
    teacher, teacher_top1 = teacher_checkpoint(splits, args.data, args.work)
    target = int(args.max_size / FILE_OVERHEAD)
    chosen = [VARIANTS[int(i)] for i in args.variants.split(",")] if args.variants else list(VARIANTS)
    teacher_mb = int8_weight_bytes(teacher.model()) / 1e6
    rows = [f"| the teacher, unpruned | | | {teacher_mb:.2f} MB | {teacher_top1:.2f}% | |"]
    for variant in chosen:
        started = time.time()
        pruned, ratio, keep = prune_variant(teacher, variant, target, data, args.work)
        model = pruned.model().eval()
        head_top1 = _own_head_top1(model, splits, pruned.preprocess)
        top1, _ = probe_top1(model, splits, pruned.preprocess)
        row = (f"| {variant.name} | {keep} | {100 * ratio:.0f}% | {int8_weight_bytes(model) / 1e6:.2f} MB | "
               f"{top1:.2f}% | {head_top1:.2f}% |")  # fmt: skip
        print(row, f"({time.time() - started:.0f} s)", flush=True)
        rows.append(row)
    body = "\n".join([
        f"## Pruning ship's student: what each way keeps of the teacher ({Path(args.data).name})",
        "",
        f"{TEACHER} from ImageNet weights, pruned into ship's int8 target ({target:,} bytes of int8 weights for a "
        f"{args.max_size / 1e6:g} MB budget), BatchNorm re-estimated on 512 training images, no training. Probe: "
        f"softmax regression on the pooled features of {len(splits.train)} train images and their mirror images "
        f"(L-BFGS, the same fit for every row), scored on {len(splits.val)} val images. Own head: the teacher's probe "
        "with its pruned inputs, as the student starts.",
        "",
        "| pruning | first blocks kept whole | channels removed from the rest | int8 weights | probe val top-1 | "
        "own head val top-1 |",
        "|---|---|---|---|---|---|",
        *rows,
    ])  # fmt: skip
    print(body)
    if args.section:
        write_section(args.section, body)


def _own_head_top1(model: nn.Module, splits, preprocess) -> float:
    loader = torch.utils.data.DataLoader(ImageSamples(splits.val, eval_transform(preprocess)), batch_size=32)
    correct = 0
    with torch.inference_mode():
        for images, labels in loader:
            correct += (model(images).argmax(1) == labels).sum().item()
    return 100.0 * correct / len(splits.val)


if __name__ == "__main__":
    main()
