"""Every registered model: interface, forward/backward, rebuild from its spec, published sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobiforge import build_from_spec, create_model, list_models, register_model
from mobiforge.errors import MobiforgeError, UnknownModelError
from mobiforge.models.base import MobileClassifier
from mobiforge.profile import count_macs, count_params

ALL_MODELS = list_models()

# Published parameter counts and multiply-adds at 224 px, 1000 classes (papers / torchvision / timm model cards).
PUBLISHED = {
    "mobilenet_v1": (4.2e6, 569e6),
    "mobilenet_v2": (3.50e6, 300e6),
    "mobilenet_v3_large": (5.48e6, 217e6),
    "mobilenet_v3_small": (2.54e6, 57e6),
    "shufflenet_v2_x1_0": (2.28e6, 146e6),
    "efficientnet_lite0": (4.65e6, 385e6),
}


def test_zoo_has_the_issue_models() -> None:
    expected = {
        "mobilenet_seed",
        "mobilenet_v1",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "shufflenet_v2_x0_5",
        "shufflenet_v2_x1_0",
        "shufflenet_v2_x1_5",
        "shufflenet_v2_x2_0",
        "efficientnet_lite0",
    }
    assert expected <= set(ALL_MODELS)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward_small_input(name: str) -> None:
    model = create_model(name, num_classes=7, small_input=True)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_interface(name: str) -> None:
    model = create_model(name, num_classes=5).eval()
    assert isinstance(model, MobileClassifier)
    x = torch.randn(1, 3, 64, 64)
    features = model.forward_features(x)
    assert features.dim() == 4 and features.shape[1] == model.num_features
    pre_logits = model.forward_head(features, pre_logits=True)
    assert pre_logits.shape == (1, model.head_hidden_size)
    assert torch.allclose(model.forward_head(features), model(x))
    assert model.preprocess.img_size == 224
    model.reset_classifier(3)
    assert model(x).shape == (1, 3)
    assert model.spec["kwargs"]["num_classes"] == 3
    assert isinstance(model.get_classifier(), nn.Module)
    model.reset_classifier(0)
    assert model(x).shape == (1, model.head_hidden_size)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_rebuild_from_spec_gives_same_model(name: str) -> None:
    model = create_model(name, num_classes=4, small_input=True).eval()
    rebuilt = build_from_spec(model.spec).eval()
    rebuilt.load_state_dict(model.state_dict())  # strict: same architecture
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x), rebuilt(x))
    assert rebuilt.preprocess.img_size == 32


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_params_and_macs(name: str) -> None:
    params, macs = PUBLISHED[name]
    model = create_model(name)
    assert count_params(model) == pytest.approx(params, rel=0.02)
    assert count_macs(model, (1, 3, 224, 224)) == pytest.approx(macs, rel=0.02)


def test_small_input_removes_two_downsamplings() -> None:
    # 32 px: the ImageNet stem collapses MobileNetV2 to 1x1; the CIFAR-style variant keeps 4x4 (total stride 8).
    x = torch.randn(1, 3, 32, 32)
    assert create_model("mobilenet_v2").eval().forward_features(x).shape[-1] == 1
    assert create_model("mobilenet_v2", small_input=True).eval().forward_features(x).shape[-1] == 4
    x = torch.randn(1, 3, 256, 256)
    for name in ALL_MODELS:
        imagenet = create_model(name).eval().forward_features(x).shape[-1]
        small = create_model(name, small_input=True).eval().forward_features(x).shape[-1]
        assert small == 4 * imagenet, name


def test_width_mult_shrinks_and_rounds_to_eight() -> None:
    full, half = create_model("mobilenet_v2"), create_model("mobilenet_v2", width_mult=0.5)
    assert count_params(half) < 0.6 * count_params(full)
    for module in half.modules():
        if isinstance(module, nn.Conv2d) and module.out_channels != 1280:
            assert module.out_channels % 8 == 0


def test_explicit_widths_round_trip_through_spec() -> None:
    # What a pruned model looks like: every width explicit, none derivable from width_mult.
    stage = [8, 16, 24, 32, 48, 64, 96]
    hidden = [16, 48, 64, 96, 96, 96, 128, 128, 128, 128, 160, 160, 160, 200, 200, 200, 320]
    model = create_model(
        "mobilenet_v2",
        num_classes=3,
        stem_channels=16,
        stage_channels=stage,
        hidden_channels=hidden,
        head_channels=256,
    )
    assert model.features[-1][0].out_channels == 256
    assert [block.out_channels for block in model.features[1:-1]][-1] == 96
    rebuilt = build_from_spec(model.spec)
    rebuilt.load_state_dict(model.state_dict())
    assert count_params(rebuilt) == count_params(model)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("mobilenet_v1", {"block_channels": [16] * 13}),
        ("mobilenet_seed", {"block_channels": [16, 24, 32, 40, 48, 56], "hidden_channels": [16, 48, 64, 96, 120, 144]}),
        (
            "mobilenet_v3_small",
            {
                "block_channels": [16, 16, 24, 24, 40, 40, 40, 48, 48, 96, 96],
                "hidden_channels": [16, 40, 48, 64, 96, 96, 96, 96, 96, 192, 192],
                "se_channels": [8, 0, 0, 16, 24, 24, 24, 24, 24, 48, 48],
            },
        ),
        ("efficientnet_lite0", {"stage_channels": [8, 16, 24, 40, 56, 96, 160]}),
        ("shufflenet_v2_x0_5", {"stages_out_channels": [16, 32, 64, 128, 512]}),
    ],
)
def test_explicit_widths_other_families(name: str, kwargs: dict) -> None:
    model = create_model(name, num_classes=2, **kwargs).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)
    build_from_spec(model.spec).load_state_dict(model.state_dict())


def test_v2_se_option_adds_squeeze_excite() -> None:
    plain, with_se = create_model("mobilenet_v2"), create_model("mobilenet_v2", use_se=True)
    assert count_params(with_se) > count_params(plain)
    assert sum(type(m).__name__ == "SqueezeExcite" for m in with_se.modules()) == 17


def test_seed_model_matches_the_corrected_article() -> None:
    model = create_model("mobilenet_seed")
    blocks = list(model.features[1:-1])
    assert [block.out_channels for block in blocks] == [32, 64, 96, 128, 192, 256]
    assert isinstance(blocks[0].shortcut, nn.Identity)  # stride 1, widths match
    for block in blocks[1:]:
        shortcut_conv = block.shortcut[0]
        assert shortcut_conv.stride == (2, 2) and shortcut_conv.kernel_size == (1, 1)
    head_conv = model.features[-1][0]
    assert (head_conv.in_channels, head_conv.out_channels) == (256, 512)
    # expand/depthwise have no norm (as in the article), so they carry a bias; the projection has BN.
    expand, depthwise, project = blocks[1].residual
    assert expand[0].bias is not None and depthwise[0].groups == 192 and isinstance(project[1], nn.BatchNorm2d)
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_unknown_model_suggests_close_matches() -> None:
    with pytest.raises(UnknownModelError, match="did you mean mobilenet_v2"):
        create_model("mobilenet_v2x")


def test_unexpected_kwarg_is_a_clear_error() -> None:
    with pytest.raises(MobiforgeError, match="does not take width_mult"):
        create_model("shufflenet_v2_x1_0", width_mult=0.5)
    with pytest.raises(MobiforgeError, match="stage_channels needs 7 values"):
        create_model("mobilenet_v2", stage_channels=[8, 16])


def test_none_kwargs_are_dropped() -> None:
    model = create_model("mobilenet_v2", num_classes=None, width_mult=None)
    assert model.spec == {"name": "mobilenet_v2", "kwargs": {}}
    assert model.num_classes == 1000


def test_duplicate_registration_is_an_error() -> None:
    def mobilenet_v2() -> nn.Module:  # same name as the registered model
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(mobilenet_v2)


def test_list_models_pattern() -> None:
    assert list_models("mobilenet_v3*") == ["mobilenet_v3_large", "mobilenet_v3_small"]
    assert list_models("shufflenet") == [n for n in ALL_MODELS if n.startswith("shufflenet")]


# He et al. 2016, section 4.2 (CIFAR-10, 32 px): 6n+2 layers, 0.27M/0.46M/0.66M/0.85M parameters (the 1x1 projection
# shortcuts here add about 1%); multiply-adds as issue 26 measured for ResNet-20.
CIFAR_RESNETS = {"resnet20": (0.27e6, 40.8e6), "resnet32": (0.46e6, None), "resnet44": (0.66e6, None),
                 "resnet56": (0.85e6, None)}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CIFAR_RESNETS))
def test_cifar_resnets_have_the_papers_size(name: str) -> None:
    params, macs = CIFAR_RESNETS[name]
    model = create_model(name, num_classes=10, small_input=True).eval()
    assert abs(count_params(model) - params) / params < 0.02
    if macs:
        assert abs(count_macs(model, (1, 3, 32, 32)) - macs) / macs < 0.01
    assert model.preprocess.img_size == 32 and model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# Parameters and multiply-adds at 32 px with 10 classes, as the builders' docstrings state them.
CONV_POOL_NETS = {"convpool_s": (0.63e6, 36e6), "convpool_s_wide": (0.86e6, 42e6), "convpool_m": (0.83e6, 77e6)}


@pytest.mark.parametrize("name", sorted(CONV_POOL_NETS))
def test_conv_pool_nets_have_their_stated_size_and_fit_the_mobile_budget_in_int8(name: str) -> None:
    params, macs = CONV_POOL_NETS[name]
    model = create_model(name, num_classes=10, small_input=True).eval()
    assert abs(count_params(model) - params) / params < 0.02 and count_params(model) < 1e6  # 1 byte a weight
    assert abs(count_macs(model, (1, 3, 32, 32)) - macs) / macs < 0.02
    assert model.preprocess.img_size == 32 and model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # Without small_input the stem and a pool take 224 px to 56, and the three stages to 7x7, like the zoo.
    assert create_model(name).forward_features(torch.randn(1, 3, 224, 224)).shape[-2:] == (7, 7)


def test_a_conv_pool_net_rebuilds_from_explicit_widths() -> None:
    from mobiforge.errors import MobiforgeError

    model = create_model("convpool_s", num_classes=3, stem_channels=8, stage_channels=[16, 24, 32],
                         hidden_channels=[8, 16, 24])  # fmt: skip
    assert model.num_features == 32 and model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(MobiforgeError, match="hidden_channels needs 3 values"):
        create_model("convpool_s", hidden_channels=[8, 8])


def test_a_cifar_resnet_refuses_a_depth_it_cannot_have() -> None:
    from mobiforge.errors import MobiforgeError
    from mobiforge.models.resnet_cifar import cifar_resnet

    with pytest.raises(ValueError, match="6n\\+2 layers"):
        cifar_resnet(21)
    with pytest.raises(MobiforgeError, match="hidden_channels needs 9 values"):
        create_model("resnet20", hidden_channels=[8, 8])
