"""Search spaces in Hydra's grammar become the right Optuna distributions, and go back as overrides."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from nscfate.errors import NscfateError
from nscfate.search.space import parse_space


def test_grammar_maps_to_distributions_with_types_kept():
    space = parse_space(
        [
            "model=choice(nscnet,resnet18)",
            "optimizer.lr=choice(0.003,1e-9)",
            "flag=choice(true,false)",
            "lr=tag(log,interval(1e-4,1e-2))",
            "m=interval(0.5,1.5)",
            "bs=range(32,129,step=32)",
            "trainer.max_epochs=3",
        ]
    )
    d = space.distributions
    assert d["model"] == CategoricalDistribution(["nscnet", "resnet18"])
    assert d["optimizer.lr"].choices == (0.003, 1e-9)  # floats stay floats
    assert d["flag"].choices == (True, False)
    assert d["lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["m"] == FloatDistribution(0.5, 1.5)
    assert d["bs"] == IntDistribution(32, 128, step=32)  # Hydra's stop is exclusive
    assert space.fixed == ["trainer.max_epochs=3"]
    assert space.overrides({"optimizer.lr": 1e-9, "flag": True, "model": "resnet18"}) == [
        "trainer.max_epochs=3",
        "optimizer.lr=1e-09",
        "flag=true",
        "model=resnet18",
    ]


def test_grid_needs_discrete_values():
    assert parse_space(["a=choice(1,2)", "b=range(0,3)"]).grid() == {"a": [1, 2], "b": [0, 1, 2]}
    with pytest.raises(NscfateError, match="lr is continuous"):
        parse_space(["lr=interval(0.1,0.2)"]).grid()


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("model=choice()", "empty choice"),
        ("x=interval(2,1)", "low < high"),
        ("x=tag(log,interval(0,1))", "low > 0"),
        ("x=range(5,1)", "start < stop"),
        ("x=choice(a", "cannot parse"),
    ],
)
def test_bad_spaces_are_named(arg, message):
    with pytest.raises(NscfateError, match=message):
        parse_space([arg])


@pytest.mark.parametrize(("epochs", "max_resource"), [("auto", "auto"), (12, 12), (1, 2)])
def test_hyperband_follows_the_trial_length(tmp_path, epochs, max_resource):
    from omegaconf import OmegaConf

    from nscfate.search.study import load_study

    search = OmegaConf.create(
        {
            "direction": "maximize",
            "sampler": "random",
            "pruner": "hyperband",
            "seed": 0,
            "storage": f"sqlite:///{tmp_path}/optuna.db",
        }
    )
    study = load_study(search, parse_space(["model=choice(a,b)"]), "s", max_epochs=epochs)
    assert study.pruner._max_resource == max_resource  # auto: Optuna estimates it from trials
