"""A run that learned nothing says so: terminal summary, MLflow tags, and the sweep's trial."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

from nscfate.evaluation.health import check_run
from nscfate.search.mirror import study_summary
from nscfate.search.sweeper import OptunaSweeper
from nscfate.search.trial import TrialContext, run_trial
from nscfate.tracking.connection import connect
from nscfate.tracking.run import tracked_train
from nscfate.tracking.summary import print_summary

from .conftest import compose_train

#: Only neuron-labelled cells carry loss: the network learns to call every cell a neuron.
ONE_CLASS = "loss.class_weights=[0.0,0.0,1.0]"


def _cells(predicted, labels=("astrocyte", "oligodendrocyte", "neuron")):
    n = len(predicted)
    return pd.DataFrame(
        {
            "split": ["test"] * n,
            "label": [labels[i % len(labels)] for i in range(n)],
            "predicted": predicted,
        }
    )


def test_a_model_that_predicts_one_class_is_flagged():
    warnings = check_run({"val/f1_macro_best": 0.167}, _cells(["neuron"] * 90))
    assert [w.code for w in warnings] == ["single_class", "chance"]
    assert "'neuron' for 100% of the 90 test cells" in warnings[0].message
    assert "recipe.min_steps" in warnings[0].advice


def test_a_model_that_learned_is_not_flagged():
    predicted = ["astrocyte", "oligodendrocyte", "neuron"] * 30
    assert check_run({"val/f1_macro_best": 0.8}, _cells(predicted)) == []


@pytest.mark.parametrize(("best", "flagged"), [(0.38, True), (0.39, False)])
def test_chance_is_one_over_the_number_of_fates(best, flagged):
    predicted = ["astrocyte", "oligodendrocyte", "neuron"] * 30
    codes = [w.code for w in check_run({"val/f1_macro_best": best}, _cells(predicted))]
    assert codes == (["chance"] if flagged else [])


def test_a_one_class_run_warns_on_the_terminal_and_in_mlflow(tmp_path, data_dir, capsys):
    cfg = compose_train(tmp_path, data_dir, ONE_CLASS, "trainer.max_epochs=3")
    result = tracked_train(cfg)
    assert [w.code for w in result.warnings] == ["single_class", "chance"]
    tags = MlflowClient(cfg.tracking.uri).get_run(result.run_id).data.tags
    assert tags["nscfate.warnings"] == "single_class,chance"
    assert "for 100% of the 36 test cells" in tags["nscfate.warning.single_class"]
    print_summary(cfg, result)
    out = capsys.readouterr().out
    assert "WARNING: this model learned nothing useful" in out and "recipe.min_steps" in out


def test_a_sweep_records_the_warning_on_its_trial(tmp_path, data_dir):
    cfg = compose_train(tmp_path, data_dir, ONE_CLASS, "trainer.max_epochs=3")
    experiment = connect(cfg.tracking.uri, cfg.tracking.experiment)
    parent = MlflowClient(cfg.tracking.uri).create_run(experiment).info.run_id
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db", study_name="warn")
    trial = study.ask()
    outcome = run_trial(cfg, TrialContext(trial, study, parent, "val/f1_macro_best", prune=False))
    OptunaSweeper._tell(study, trial, outcome, "val/f1_macro_best")
    done = study.trials[0]
    assert done.state == optuna.trial.TrialState.COMPLETE
    assert set(done.user_attrs["warnings"]) == {"single_class", "chance"}
    summary = study_summary(study)
    assert summary["warned"] == 1 and "single_class" in summary["best"]["warnings"]
