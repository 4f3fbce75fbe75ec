"""Every option of every config group composes, and instantiates where it can on this machine."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from .conftest import CONF, compose_train


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_have_their_options():
    assert {"adamw", "sgd"} <= set(options("optimizer"))
    assert {"cosine", "onecycle", "none"} <= set(options("scheduler"))
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"fdr", "overfit", "limit"} <= set(options("debug"))
    assert {"synthetic", "folder"} <= set(options("data"))
    assert {"none", "light", "strong"} <= set(options("augmentation"))
    assert len(options("experiment")) >= 1


@pytest.mark.parametrize("name", options("optimizer"))
def test_optimizers_instantiate(tmp_path, data_dir, name):
    cfg = compose_train(tmp_path, data_dir, f"optimizer={name}")
    opt = instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.Optimizer) and opt.defaults["lr"] == cfg.optimizer.lr


@pytest.mark.parametrize("name", options("scheduler"))
def test_schedulers_instantiate(tmp_path, data_dir, name):
    cfg = compose_train(tmp_path, data_dir, f"scheduler={name}")
    assert cfg.scheduler.interval in ("epoch", "step")
    if cfg.scheduler.scheduler is None:
        return
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    factory = instantiate(cfg.scheduler.scheduler)
    kwargs = {"total_steps": 10} if name == "onecycle" else {}
    assert isinstance(factory(optimizer=opt, **kwargs), torch.optim.lr_scheduler.LRScheduler)


@pytest.mark.parametrize("name", options("trainer"))
def test_trainers_compose_and_cpu_instantiates(tmp_path, data_dir, name):
    cfg = compose_train(tmp_path, data_dir, f"trainer={name}")
    if name == "gpu":
        assert (
            cfg.trainer.precision == "bf16-mixed"
            and cfg.runtime.channels_last
            and cfg.data.pin_memory
            and cfg.data.transform_on == "device"  # batches finished on the GPU
            and cfg.data.eval_batch_size == 256  # a GPU infers in large batches
        )
        # The datamodule it builds hands the trainer raw batches, and finishes them in its hook.
        dm = instantiate(cfg.data)
        assert dm.transform_on == "device" and dm.pin_memory
    elif name == "ddp":
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices >= 2
        assert cfg.data.eval_batch_size == 256
    else:
        trainer = instantiate(cfg.trainer, logger=False)
        assert trainer.max_epochs == 2
        assert cfg.data.eval_batch_size == 32  # a CPU infers fastest in small batches


@pytest.mark.parametrize("name", options("callbacks"))
def test_callbacks_instantiate(tmp_path, data_dir, name):
    from nscfate.training.train import instantiate_callbacks

    cfg = compose_train(tmp_path, data_dir, f"callbacks={name}", fast=False)
    built = instantiate_callbacks(cfg.callbacks)
    assert len(built) == (4 if name == "default" else 0)


@pytest.mark.parametrize("name", options("data"))
@pytest.mark.parametrize("aug", options("augmentation"))
def test_data_and_augmentation_compose(tmp_path, data_dir, tiny_synth, name, aug):
    extra = [f"data.path={tiny_synth.path}"] if name == "folder" else []
    cfg = compose_train(tmp_path, data_dir, f"data={name}", f"augmentation={aug}", *extra)
    dm = instantiate(cfg.data)
    assert dm.augmentation_cfg.name == aug
    assert dm.normalizer.mode == "per_image"


@pytest.mark.parametrize("name", options("debug"))
def test_debug_options_compose(tmp_path, data_dir, name):
    cfg = compose_train(tmp_path, data_dir, f"debug={name}")
    trainer = OmegaConf.to_container(cfg.trainer)
    assert {"fdr": "fast_dev_run", "overfit": "overfit_batches", "limit": "limit_train_batches"}[
        name
    ] in trainer


@pytest.mark.parametrize("name", options("experiment"))
def test_experiments_compose_and_say_what_they_reproduce(tmp_path, data_dir, name):
    cfg = compose_train(tmp_path, data_dir, f"experiment={name}")
    assert cfg.task_name == name
    header = (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert header[0] == "# @package _global_" and header[1].startswith("# Reproduces:")


@pytest.mark.parametrize(("script", "prog"), [("train", "train"), ("evaluate", "eval")])
def test_an_install_without_its_checkout_refuses_with_one_line(tmp_path, script, prog):
    """A copy of the package with no conf/ beside it (what a wheel installed elsewhere looks like)."""
    import os
    import shutil
    import subprocess
    import sys

    from .conftest import REPO

    shutil.copytree(REPO / "nscfate", tmp_path / "site" / "nscfate")
    env = os.environ | {"PYTHONPATH": str(tmp_path / "site")}
    proc = subprocess.run(
        [sys.executable, "-m", f"nscfate.cli.{script}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert line.startswith(f"nscfate-{prog}: error: nscfate's configs are not at {tmp_path}")
    assert "pip install -e" in line and len(line.splitlines()) == 1


def test_the_lightning_module_is_a_config_node(tmp_path, data_dir):
    from nscfate.evaluation.checkpoint import network_weights
    from nscfate.training.module import FateClassifier

    cfg = compose_train(
        tmp_path,
        data_dir,
        "loss.class_weights=[1.0,2.0,1.0]",
        "optimizer.lr=0.01",
        "scheduler=none",
    )
    module = instantiate(cfg.module)
    assert isinstance(module, FateClassifier) and module.scheduler_factory is None
    assert module.criterion.weight.tolist() == [1.0, 2.0, 1.0]
    assert module.optimizer_factory(params=module.parameters()).defaults["lr"] == 0.01
    assert type(module.net).__name__ == "SmallCNN"
    compiled = {f"net._orig_mod.{k}": v for k, v in module.net.state_dict().items()}
    assert network_weights(compiled).keys() == module.net.state_dict().keys()
