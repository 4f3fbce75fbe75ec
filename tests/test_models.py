"""Model architectures, the factory and the Hydra ``model`` config group."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from nscfate.data.schema import CLASSES
from nscfate.errors import NscfateError
from nscfate.models import NscNet, SmallCNN, available_models, create_model

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MODEL_CONFIGS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
OWN_CONFIGS = {"nscnet", "small_cnn"}
PAPER_PARAMS = 3_992_867  # the authors' released Network(1, 3), seed-paper digest section 4


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


@torch.no_grad()
def logits(model: nn.Module, *shape: int) -> torch.Tensor:
    return model.eval()(torch.randn(*shape))


# --- nscnet -------------------------------------------------------------------------------------


def test_nscnet_matches_paper_parameter_count() -> None:
    model = NscNet()
    assert n_params(model) == PAPER_PARAMS
    # The digest's cross-check: block 6 (our exit flow) alone is 2.64 M.
    assert n_params(model.exit) == 2_641_408
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_nscnet_width_and_middle_blocks_shrink_it() -> None:
    full = n_params(NscNet())
    assert n_params(NscNet(middle_blocks=0)) == full - 4 * 205_056  # 3 x (sepconv 256 + BN)
    half = NscNet(width=0.5)
    assert half.num_features == 1024
    assert n_params(half) < full / 3


@pytest.mark.parametrize(("height", "width", "feature_hw"), [(64, 64, (8, 8)), (45, 30, (6, 4))])
def test_nscnet_any_input_size(height: int, width: int, feature_hw: tuple[int, int]) -> None:
    model = NscNet(width=0.25, middle_blocks=1).eval()
    x = torch.randn(2, 1, height, width)
    with torch.no_grad():
        assert model.forward_features(x).shape[-2:] == feature_hw  # the paper's 45x30 -> 6x4
        assert model(x).shape == (2, len(CLASSES))


def test_nscnet_without_middle_flow_runs_and_trains() -> None:
    model = NscNet(width=0.25, middle_blocks=0, dropout=0.5)
    loss = model(torch.randn(4, 1, 32, 32)).logsumexp(1).mean()
    loss.backward()
    assert model.stem[0].weight.grad is not None


def test_nscnet_channels_last_gives_same_logits() -> None:
    model = NscNet(width=0.25, middle_blocks=1).eval()
    x = torch.randn(2, 1, 40, 40)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("options", "key"),
    [({"width": 0}, "model.width"), ({"middle_blocks": -1}, "model.middle_blocks"),
     ({"dropout": 1.0}, "model.dropout")],
)  # fmt: skip
def test_nscnet_rejects_bad_options(options: dict, key: str) -> None:
    with pytest.raises(NscfateError, match=key):
        NscNet(**options)


# --- small_cnn ----------------------------------------------------------------------------------


def test_small_cnn_is_small_and_size_agnostic() -> None:
    model = SmallCNN()
    assert 50_000 <= n_params(model) <= 100_000
    for shape in [(3, 1, 64, 64), (3, 1, 45, 30), (3, 1, 5, 5)]:
        assert logits(model, *shape).shape == (3, 3)
    deep = SmallCNN(width=8, depth=8)
    assert logits(deep, 2, 1, 16, 16).shape == (2, 3)
    with pytest.raises(NscfateError, match="model.depth=0"):
        SmallCNN(depth=0)


# --- factory ------------------------------------------------------------------------------------


def test_create_model_builds_own_and_timm_models() -> None:
    assert isinstance(create_model("nscnet", width=0.25, middle_blocks=0), NscNet)
    small = create_model("small_cnn", num_classes=5, in_chans=2)
    assert logits(small, 2, 2, 32, 32).shape == (2, 5)
    resnet = create_model("resnet18", num_classes=4)
    assert first_conv(resnet).weight.shape[1] == 1
    assert logits(resnet, 2, 1, 64, 64).shape == (2, 4)


def test_unknown_model_is_rejected_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_build(*args: object, **kwargs: object) -> nn.Module:
        raise AssertionError("timm.create_model called for an unknown name")

    monkeypatch.setattr(timm, "create_model", must_not_build)
    with pytest.raises(NscfateError, match="unknown model 'no_such_net'.*nscnet, small_cnn"):
        create_model("no_such_net")
    with pytest.raises(NscfateError, match="'resnt18'.*did you mean.*resnet18"):
        create_model("resnt18")
    with pytest.raises(NscfateError, match="did you mean.*small_cnn"):
        create_model("smallcnn")


def test_create_model_rejects_bad_arguments() -> None:
    with pytest.raises(NscfateError, match="unknown option.*depth.*width, middle_blocks, dropout"):
        create_model("nscnet", depth=3)
    with pytest.raises(NscfateError, match="model.pretrained=true.*nscnet"):
        create_model("nscnet", pretrained=True)
    with pytest.raises(NscfateError, match="model.num_classes=0"):
        create_model("small_cnn", num_classes=0)


def test_available_models_lists_own_first_then_timm() -> None:
    assert available_models("*", include_timm=False) == ["nscnet", "small_cnn"]
    names = available_models("resnet1*")
    assert "resnet18" in names and "nscnet" not in names
    assert available_models()[:2] == ["nscnet", "small_cnn"]


# --- Hydra config group -------------------------------------------------------------------------


def compose_model(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(overrides=[f"+model={name}", *overrides]).model


def test_config_group_has_the_documented_models() -> None:
    expected = {"timm", "resnet18", "resnet50", "densenet121", "efficientnet_b0", "convnext_atto",
                "mobilenetv3_small_100"} | OWN_CONFIGS  # fmt: skip
    assert set(MODEL_CONFIGS) == expected


@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_every_model_config_instantiates_grey_three_class_model(config: str) -> None:
    overrides = ["model.name=resnet18"] if config == "timm" else []
    cfg = compose_model(config, *overrides)
    assert cfg._target_ == "nscfate.models.create_model"
    assert (cfg.num_classes, cfg.in_chans, cfg.pretrained) == (3, 1, False)
    if config not in OWN_CONFIGS | {"timm"}:
        assert cfg.name == config
    model = instantiate(cfg)
    assert first_conv(model).in_channels == 1
    assert logits(model, 2, 1, 64, 64).shape == (2, 3)


def test_model_config_overrides_reach_the_architecture() -> None:
    cfg = compose_model("nscnet", "model.width=0.5", "model.middle_blocks=0", "model.dropout=0.1")
    model = instantiate(cfg)
    assert model.num_features == 1024 and len(model.middle) == 0 and model.dropout.p == 0.1
    assert n_params(instantiate(compose_model("nscnet"))) == PAPER_PARAMS
    wide = instantiate(compose_model("small_cnn", "model.width=8", "model.depth=2"))
    assert wide.num_features == 8
