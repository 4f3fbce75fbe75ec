"""The training recipe: ``auto`` batch size and epochs follow the data; limits adapt to small loaders."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from nscfate.errors import NscfateError
from nscfate.training.recipe import fit_to_data, plan_training, steps_per_epoch

from .conftest import CONF

#: The shipped recipe settings.
RECIPE = OmegaConf.load(CONF / "train.yaml").recipe


def test_steps_per_epoch_matches_the_loader():
    assert steps_per_epoch(499, 128) == 3  # at least two full batches: the ragged one is dropped
    assert steps_per_epoch(200, 128) == 2  # fewer: it is kept
    assert steps_per_epoch(1000, 32, world_size=2) == 15


def test_small_training_sets_get_smaller_batches_and_more_epochs():
    lab = plan_training(499, "auto", "auto", RECIPE)
    assert (lab.batch_size, lab.steps_per_epoch) == (32, 15)
    assert lab.steps >= RECIPE.min_steps and lab.min_steps == RECIPE.min_steps
    tiny = plan_training(60, "auto", "auto", RECIPE)
    assert tiny.batch_size == RECIPE.min_batch_size and tiny.max_epochs == RECIPE.max_epochs


def test_large_training_sets_keep_the_largest_batch_and_fewest_epochs():
    big = plan_training(100_000, "auto", "auto", RECIPE)
    assert (big.batch_size, big.max_epochs) == (RECIPE.max_batch_size, RECIPE.min_epochs)


def test_numbers_are_used_as_given():
    fixed = plan_training(499, 128, 12, RECIPE)
    assert (fixed.batch_size, fixed.max_epochs, fixed.steps_per_epoch, fixed.min_steps) == (
        128,
        12,
        3,
        0,
    )


@pytest.mark.parametrize(
    ("batch", "epochs", "message"),
    [
        (0, 12, "data.batch_size=0"),
        (32, -1, "trainer.max_epochs=-1"),
        ("big", 12, "data.batch_size=big"),
    ],
)
def test_bad_values_are_refused_by_name(batch, epochs, message):
    with pytest.raises(NscfateError, match=f"{message}: expected a positive integer or auto"):
        plan_training(499, batch, epochs, RECIPE)


def _cfg(batch="auto", **trainer):
    return OmegaConf.create(
        {
            "recipe": RECIPE,
            "data": {"batch_size": batch, "eval_batch_size": 256},
            "trainer": {"max_epochs": "auto", "devices": 1} | trainer,
        }
    )


def test_fit_to_data_returns_a_resolved_copy():
    cfg = _cfg()
    fitted, plan = fit_to_data(cfg, n_train=499, n_val=250)
    assert fitted.data.batch_size == 32 and fitted.trainer.max_epochs == plan.max_epochs
    assert fitted.trainer.min_steps == RECIPE.min_steps  # early stopping waits for them
    assert cfg.data.batch_size == "auto" and "min_steps" not in cfg.trainer  # input untouched


def test_fractional_limits_never_ask_for_less_than_one_batch():
    cfg = _cfg(max_epochs=3, limit_train_batches=0.2, limit_val_batches=0.5)
    fitted, _ = fit_to_data(cfg, n_train=499, n_val=180)  # one validation batch of 256
    assert fitted.trainer.limit_val_batches == 1
    assert fitted.trainer.limit_train_batches == 0.2  # 0.2 of 15 batches is 3: kept as asked


def test_debug_runs_do_not_hold_back_early_stopping():
    fitted, _ = fit_to_data(_cfg(fast_dev_run=True), n_train=499, n_val=180)
    assert "min_steps" not in fitted.trainer
