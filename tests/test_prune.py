"""Structured pruning: every supported family prunes, rebuilds from its spec, and fine-tunes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mobiforge import create_model
from mobiforge.checkpoint import load_checkpoint, model_checkpoint, model_from_checkpoint, save_checkpoint
from mobiforge.cli import main
from mobiforge.errors import MobiforgeError
from mobiforge.models.widths import check_prunable, respec
from mobiforge.profile import count_macs
from mobiforge.prune import PruneConfig, prune, prune_model, ratio_for_target
from mobiforge.train import train
from tests.helpers import make_split_folder, small_train_config

pytest.importorskip("torch_pruning")

FAMILIES = [
    ("mobilenet_seed", {"width_mult": 0.5}),
    ("mobilenet_v1", {"width_mult": 0.5}),
    ("mobilenet_v2", {"width_mult": 0.5}),
    ("mobilenet_v2", {"width_mult": 0.5, "use_se": True}),
    ("mobilenet_v3_small", {"width_mult": 0.75}),
    ("mobilenet_v3_large", {"width_mult": 0.5}),
    ("efficientnet_lite0", {"width_mult": 0.5, "tf_padding": True}),
    ("resnet20", {"width_mult": 1.5}),
    ("convpool_s", {}),
]
SIZE = 64


def _convs(model: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize(("name", "kwargs"), FAMILIES, ids=lambda v: str(v))
def test_pruned_model_rebuilds_from_its_spec(name: str, kwargs: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **kwargs).eval()
    example = torch.randn(2, 3, SIZE, SIZE)
    macs_before = count_macs(model, (1, 3, SIZE, SIZE))
    prune_model(model, example[:1], PruneConfig(checkpoint="-", ratio=0.5), 0.5)
    spec = respec(model)
    assert spec["kwargs"]["stem_channels"] == _convs(model)[0].out_channels
    assert count_macs(model, (1, 3, SIZE, SIZE)) < 0.6 * macs_before
    # Channels stay multiples of 8 (depthwise/SE widths follow the layers they are tied to).
    assert all(conv.out_channels % 8 == 0 for conv in _convs(model) if conv.out_channels != 5)
    # A plain checkpoint: weights_only load, rebuilt from the dict, the same outputs as the pruned module.
    path = save_checkpoint(model_checkpoint(model, classes=[str(i) for i in range(5)]), tmp_path / "p.pt")
    raw = torch.load(path, weights_only=True)
    rebuilt = model_from_checkpoint(raw)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(example), model(example))
    assert rebuilt.get_classifier()(torch.randn(1, rebuilt.num_features)).shape == (1, 5)


def test_shufflenet_stops_with_the_reason() -> None:
    with pytest.raises(MobiforgeError, match="channel shuffle"):
        check_prunable("shufflenet_v2_x1_0")


def test_target_macs_is_met_without_overshooting_much() -> None:
    model = create_model("mobilenet_v2", num_classes=10, width_mult=0.5, small_input=True).eval()
    example = torch.randn(1, 3, 32, 32)

    def measure(m: torch.nn.Module) -> int:
        return count_macs(m, (1, 3, 32, 32))

    target = measure(model) // 2
    config = PruneConfig(checkpoint="-", target_macs=target)
    ratio = ratio_for_target(model, example, config, measure, target)
    prune_model(model, example, config, ratio)
    assert 0.8 * target <= measure(model) <= target


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("prune")
    data = make_split_folder(root / "data", classes=3, train=32, val=6)
    config = small_train_config(
        data, root / "runs", "base", img_size=32, batch_size=16, model="mobilenet_v2", width_mult=0.5, epochs=2
    )
    return data, train(config).run_dir / "last.pt"


@pytest.mark.parametrize("importance", ["l1", "taylor", "bn"])
def test_prune_and_finetune_end_to_end(trained: tuple[Path, Path], tmp_path: Path, importance: str) -> None:
    _, checkpoint = trained
    config = PruneConfig(
        checkpoint=str(checkpoint),
        ratio=0.5,
        importance=importance,
        iterative_steps=2,
        finetune_epochs=1,
        batch_size=16,
        workers=0,
        runs_dir=str(tmp_path),
        name="pruned",
    )
    result = prune(config)
    assert result.pruned.macs < 0.6 * result.before.macs
    assert result.pruned.params < result.before.params
    assert result.after is not None and result.after.top1 is not None
    for name in ("pruned.pt", "best.pt", "last.pt", "metrics.csv", "prune_report.json"):
        assert (result.run_dir / name).is_file(), name
    report = json.loads((result.run_dir / "prune_report.json").read_text())
    assert report["before"]["macs"] == result.before.macs
    finetuned = load_checkpoint(result.run_dir / "best.pt")
    assert finetuned["spec"] == result.spec  # the fine-tuned model keeps the pruned widths
    assert finetuned["config"]["init_from"] == str(result.run_dir / "pruned.pt")
    model_from_checkpoint(finetuned)


def test_pruning_re_estimates_batchnorm_statistics_on_training_images(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    from mobiforge.data import DataConfig, ImageSamples, eval_transform, split_samples
    from mobiforge.models.base import Preprocess

    data, checkpoint = trained
    common = dict(checkpoint=str(checkpoint), ratio=0.5, batch_size=16, workers=0, runs_dir=str(tmp_path))
    stale = model_from_checkpoint(prune(PruneConfig(**common, name="stale", bn_recalibration_images=0)).checkpoint)
    fresh = model_from_checkpoint(prune(PruneConfig(**common, name="fresh", bn_recalibration_images=1000)).checkpoint)
    # With every training image used, the stem's BN mean is exactly the mean of the stem conv's outputs on them.
    saved = load_checkpoint(checkpoint)
    preprocess = Preprocess.from_dict(saved["preprocess"])
    samples = split_samples(DataConfig(data=str(data)), "train", saved["classes"])
    images = torch.stack([image for image, _ in ImageSamples(samples, eval_transform(preprocess))])
    for model in (stale, fresh):
        model.eval()
    stem_conv, stem_bn = _convs(fresh)[0], next(m for m in fresh.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        expected = stem_conv(images).mean(dim=(0, 2, 3))
    torch.testing.assert_close(stem_bn.running_mean, expected, rtol=1e-4, atol=1e-5)
    stale_bn = next(m for m in stale.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(stale_bn.running_mean, expected, atol=1e-3)


def test_kept_blocks_keep_their_weights_and_statistics_while_the_rest_is_pruned(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, checkpoint = trained
    keep = 4
    config = PruneConfig(
        checkpoint=str(checkpoint), ratio=0.5, keep_blocks=keep, workers=0, runs_dir=str(tmp_path), name="kept"
    )
    result = prune(config)
    before, after = model_from_checkpoint(checkpoint), model_from_checkpoint(result.checkpoint)
    front = before.features[:keep].state_dict()
    assert front.keys() == after.features[:keep].state_dict().keys()
    for key, value in after.features[:keep].state_dict().items():  # weights and BN statistics alike
        torch.testing.assert_close(value, front[key], msg=key)
    assert result.pruned.params < 0.7 * result.before.params  # the later blocks lost channels
    assert _convs(after.features[keep:])[0].out_channels < _convs(before.features[keep:])[0].out_channels
    assert json.loads((result.run_dir / "prune_report.json").read_text())["config"]["keep_blocks"] == keep


@pytest.mark.slow  # over 10 s: the unit suite keeps under 10 minutes (make test-all runs it)
def test_cli_prune_to_target_macs_with_teacher(trained: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    _, checkpoint = trained
    macs = count_macs(model_from_checkpoint(checkpoint), (1, 3, 32, 32))
    code = main(
        ["prune", str(checkpoint), "--target-macs", f"{macs / 2 / 1e6:.3f}M", "--finetune-epochs", "1",
         "--teacher", str(checkpoint), "-b", "16", "-j", "0", "--runs-dir", str(tmp_path), "--name", "cli"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "pruned" in out and "fine-tuning" in out
    pruned = model_from_checkpoint(tmp_path / "cli" / "best.pt")
    assert count_macs(pruned, (1, 3, 32, 32)) <= macs / 2
    assert load_checkpoint(tmp_path / "cli" / "best.pt")["config"]["distill"]["teacher"] == str(checkpoint)


def test_prune_flag_errors(trained: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    _, checkpoint = trained
    assert main(["prune", str(checkpoint), "--ratio", "1.5", "--runs-dir", str(tmp_path)]) == 2
    assert "--ratio must be in (0, 1), got 1.5" in capsys.readouterr().err
    assert main(["prune", str(checkpoint), "--target-macs", "lots", "--runs-dir", str(tmp_path)]) == 2
    assert "--target-macs 'lots'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prune", str(checkpoint), "--ratio", "0.5", "--target-macs", "1M"])
    assert main(["prune", str(checkpoint), "--target-params", "100", "--runs-dir", str(tmp_path)]) == 2
    assert "cannot be reached" in capsys.readouterr().err
    assert main(["prune", str(checkpoint), "--ratio", "0.5", "--keep-blocks", "99", "--runs-dir", str(tmp_path)]) == 2
    assert "--keep-blocks must be below" in capsys.readouterr().err


def test_taylor_gradients_are_computed_once_for_copies_of_one_model(trained: tuple[Path, Path]) -> None:
    """A target's bisection prunes ~11 copies of one model: their gradients are the same, passed once."""
    import copy

    from mobiforge.checkpoint import Checkpoint
    from mobiforge.data import DataConfig
    from mobiforge.prune import taylor_gradients

    data, path = trained
    checkpoint = Checkpoint.load(path)
    model = checkpoint.model().eval()
    gradients = taylor_gradients(checkpoint, DataConfig(data=str(data), img_size=32, batch_size=8, workers=0), 1)
    passes = []
    model.register_forward_hook(lambda *args: passes.append(1))
    gradients(model)
    first = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    twin = copy.deepcopy(model)
    twin._forward_hooks.clear()
    twin.register_forward_hook(lambda *args: passes.append(1))
    gradients(twin)
    assert len(passes) == 1 and first
    assert all(torch.equal(first[name], p.grad) for name, p in twin.named_parameters() if name in first)
    with torch.no_grad():
        next(twin.parameters()).add_(1.0)
    gradients(twin)  # other weights: passed again
    assert len(passes) == 2
