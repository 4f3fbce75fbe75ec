"""Promote, predict, serve: the registry gate, alias bookkeeping, predictions on real crops, the server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from nscfate.errors import NscfateError

from .conftest import REPO, compose_train, console_script, model_server, run_cli

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, data_dir):
    """Two finished runs on one data set and split (a weak and a better one), one on another split,
    and nscfate@champion (the better one)."""
    from nscfate.tracking.registry import candidate_from_run, promote
    from nscfate.tracking.run import tracked_train

    tmp = tmp_path_factory.mktemp("registry")
    data = "data.synthetic.cells_per_group=30"  # enough cells that a few epochs clearly learn
    weak = tracked_train(
        compose_train(tmp, data_dir, data, "trainer.max_epochs=1", "optimizer.lr=1e-6")
    )
    good = tracked_train(
        compose_train(
            tmp,
            data_dir,
            data,
            "trainer.max_epochs=8",
            "optimizer.lr=3e-3",
            "~callbacks.early_stopping",
        )
    )
    other = tracked_train(
        compose_train(tmp, data_dir, data, "trainer.max_epochs=1", "data.split.seed=7")
    )
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    # The champion the predict and serve tests use; the gate tests use registered models of their own.
    promote(client, "nscfate", candidate_from_run(client, good.run_id), "test/f1_macro", 0.0, False)
    return {"tmp": tmp, "uri": uri, "weak": weak.run_id, "good": good.run_id, "other": other.run_id}


def cli(
    name: str, *args: str, ok: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    exe = console_script(name)
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=600, env=env)
    if ok and proc.returncode != 0:
        pytest.fail(f"{name} {' '.join(args)} failed: {proc.stderr[-3000:]}")
    return proc


def _promote(registry, name: str, run: str, metric: str = "test/f1_macro", **kwargs):
    from nscfate.tracking.registry import candidate_from_run, promote

    client = MlflowClient(registry["uri"])
    candidate = candidate_from_run(client, registry[run])
    return promote(client, name, candidate, metric, kwargs.pop("min_delta", 0.0), False, **kwargs)


def versions(uri: str, name: str) -> int:
    return len(MlflowClient(uri).search_model_versions(f"name='{name}'"))


def aliases(uri: str, name: str = "nscfate") -> dict[str, str]:
    return {k: str(v) for k, v in MlflowClient(uri).get_registered_model(name).aliases.items()}


def test_promotion_gate_and_alias_bookkeeping(registry):
    uri, client = registry["uri"], MlflowClient(registry["uri"])
    first = _promote(registry, "gate", "weak")
    assert first.promoted and first.reason == "no champion yet"
    assert aliases(uri, "gate") == {"champion": "1", "challenger": "1"}

    better = _promote(registry, "gate", "good")
    assert (
        better.challenger_metrics["test/f1_macro"] > better.champion_metrics["test/f1_macro"] + 0.05
    )
    assert better.promoted and aliases(uri, "gate") == {"champion": "2", "challenger": "2"}
    v2 = client.get_model_version("gate", "2").tags
    assert v2["nscfate.compared_with"] == "v1" and v2["nscfate.decision"].startswith(
        "promoted to champion"
    )
    assert float(v2["nscfate.test/f1_macro"]) == pytest.approx(
        better.challenger_metrics["test/f1_macro"], abs=1e-6
    )
    assert "dethroned by v2" in client.get_model_version("gate", "1").tags["nscfate.last_challenge"]

    worse = _promote(registry, "gate", "weak")  # scored first, refused: no version at all
    assert not worse.promoted and worse.challenger is None
    assert versions(uri, "gate") == 2 and aliases(uri, "gate") == {
        "champion": "2",
        "challenger": "2",
    }
    defended = client.get_model_version("gate", "2").tags["nscfate.last_challenge"]
    assert defended.startswith(f"defended against run {registry['weak']}")

    forced = cli(
        "nscfate-promote",
        f"run_id={registry['weak']}",
        f"tracking.uri={uri}",
        "promote.model_name=gate",
        "--force",
        f"hydra.run.dir={registry['tmp']}/promote",
    )
    assert "PROMOTED: gate v3 is champion" in forced.stdout
    assert aliases(uri, "gate") == {"champion": "3", "challenger": "3"}
    assert (
        client.get_model_version("gate", "3").tags["nscfate.decision"]
        == "promoted to champion: forced"
    )


def test_min_delta_keeps_the_champion(registry):
    _promote(registry, "delta", "good")
    again = _promote(registry, "delta", "good", min_delta=2.0)
    assert not again.promoted and versions(registry["uri"], "delta") == 1


def test_other_split_is_refused_before_registering(registry):
    _promote(registry, "split", "good")
    with pytest.raises(NscfateError, match="not comparable"):
        _promote(registry, "split", "other")
    assert versions(registry["uri"], "split") == 1  # nothing half-registered


@pytest.mark.parametrize("direction", [None, "maximize"])
def test_calibration_error_is_better_lower(registry, direction):
    name = f"ece-{direction}"
    _promote(registry, name, "weak", metric="test/ece", direction=direction)
    d = _promote(registry, name, "good", metric="test/ece", direction=direction)
    mine, theirs = d.challenger_metrics["test/ece"], d.champion_metrics["test/ece"]
    assert mine != theirs and d.direction == (direction or "minimize")
    assert d.promoted == (mine < theirs if direction is None else mine > theirs)
    assert versions(registry["uri"], name) == 1 + d.promoted


def test_the_gate_fails_closed_when_the_champion_cannot_be_scored(registry, tmp_path):
    import mlflow

    champion = _promote(registry, "closed", "weak").challenger
    model_id = champion.source.removeprefix("models:/")
    mlflow.set_tracking_uri(registry["uri"])
    location = Path(mlflow.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    hidden = tmp_path / "hidden"
    location.rename(hidden)  # the champion's files are gone: it cannot be scored
    try:
        with pytest.raises(NscfateError, match="does not resolve|cannot score"):
            _promote(registry, "closed", "good")
    finally:
        hidden.rename(location)
    assert versions(registry["uri"], "closed") == 1 and aliases(registry["uri"], "closed") == {
        "champion": "1",
        "challenger": "1",
    }


def test_an_unreadable_registry_is_not_an_empty_one(registry, monkeypatch):
    from mlflow.exceptions import MlflowException

    from nscfate.tracking.registry import current_champion

    client = MlflowClient(registry["uri"])
    assert current_champion(client, "no-such-model") is None  # truly none: the candidate may win

    def broken(*args, **kwargs):
        raise MlflowException("database is locked", error_code="INTERNAL_ERROR")

    monkeypatch.setattr(client, "get_registered_model", broken)
    with pytest.raises(NscfateError, match="cannot read the champion of 'nscfate'"):
        current_champion(client, "nscfate")


def test_the_split_is_taken_by_cell_identity(registry, tmp_path):
    import dataclasses
    import shutil

    from nscfate.tracking.registry import candidate_from_run, test_split_crops

    candidate = candidate_from_run(MlflowClient(registry["uri"]), registry["good"])
    _, expected = test_split_crops(candidate)
    copy = tmp_path / "store"
    shutil.copytree(candidate.dataset_path, copy)
    moved = dataclasses.replace(candidate, dataset_path=str(copy))
    split_file = copy / "splits" / f"{candidate.split_digest[:16]}.csv"
    table = pd.read_csv(split_file, keep_default_na=False)
    table.sample(frac=1.0, random_state=0).to_csv(split_file, index=False)  # rows reordered
    _, cells = test_split_crops(moved)
    assert cells["source"].tolist() == expected["source"].tolist()
    table.loc[table["split"] == "train", "split"] = "test"  # a different split under the same name
    table.to_csv(split_file, index=False)
    with pytest.raises(NscfateError, match="does not give the run's split digest"):
        test_split_crops(moved)


def test_predict_real_crops_with_champion(registry, tmp_path, sample_pngs):
    real = tmp_path / "real"
    real.mkdir()
    for p in sample_pngs:
        (real / p.name).write_bytes(p.read_bytes())
    cli(
        "nscfate-predict",
        "model=models:/nscfate@champion",
        f"input={real}",
        f"output={tmp_path}/pred.csv",
        f"tracking.uri={registry['uri']}",
        f"hydra.run.dir={tmp_path}/h",
    )
    rows = pd.read_csv(tmp_path / "pred.csv")
    assert len(rows) == 6 and set(rows["fate"]) <= {"astrocyte", "oligodendrocyte", "neuron"}
    probs = rows[["p_astrocyte", "p_oligodendrocyte", "p_neuron"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    # one numeric column per fate by default: the raw logits only with logits=true
    assert not [c for c in rows if c.startswith("logit_")]
    assert not (tmp_path / "pred_fractions.csv").exists()  # a flat folder has no conditions


def test_predict_store_gives_fraction_tables(registry, tmp_path, tiny_synth):
    run = MlflowClient(registry["uri"]).get_run(registry["good"])
    code, stdout, stderr = run_cli(
        "predict",
        f"model={registry['good']}",
        f"input={tiny_synth.path}",
        f"output={tmp_path}/p.csv",
        f"tracking.uri={registry['uri']}",
        f"hydra.run.dir={tmp_path}/h",
        "logits=true",
    )
    assert code == 0, stderr[-3000:]
    assert "Fate fractions" in stdout and run.data.tags["nscfate.model_uri"]
    fractions = pd.read_csv(tmp_path / "p_fractions.csv")
    assert set(fractions["condition"]) == {"control", "NT3", "CNTF", "T3", "nanoparticle"}
    assert len(fractions) == 5 * 4 * 3  # condition x day x fate
    assert {"day", "n_cells", "raw_frac", "est_frac", "ci_low", "ci_high", "ood_frac"} <= set(
        fractions
    )
    per_group = fractions.groupby(["condition", "day"])[["raw_frac", "est_frac"]].sum()
    assert np.allclose(per_group, 1.0)
    assert (fractions["ci_low"] <= fractions["est_frac"] + 1e-9).all()
    assert (fractions["est_frac"] <= fractions["ci_high"] + 1e-9).all()
    cells = pd.read_csv(tmp_path / "p.csv")
    assert len(cells) == len(tiny_synth) and {"label", "day", "condition"} <= set(cells)
    assert {"ood", "ood_score", "logit_neuron"} <= set(cells)


def test_predict_mixed_sizes_and_bit_depths(registry, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(90, 120, (45, 30), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(900, 1200, (80, 70), dtype=np.uint16)).save(folder / "b.png")
    (folder / "m.csv").write_text("path,condition\na.png,NT3\nb.png,NT3\n")
    code, _, stderr = run_cli(
        "predict",
        f"model={registry['good']}",
        f"input={folder}/m.csv",
        f"output={tmp_path}/m.csv",
        f"tracking.uri={registry['uri']}",
        f"hydra.run.dir={tmp_path}/h",
    )
    assert code == 0, stderr[-3000:]
    assert len(pd.read_csv(tmp_path / "m.csv")) == 2
    assert pd.read_csv(tmp_path / "m_fractions.csv")["n_cells"].tolist() == [2] * 3


def test_predict_corrects_a_skewed_mix_toward_the_truth(registry, tmp_path, tiny_synth):
    """A lab's own plate with a skewed fate mix (70/20/10 instead of the training's 1/3 each):
    the corrected fractions are closer to the true ones than counting argmax predictions."""
    import mlflow

    from nscfate.data.schema import CLASSES
    from nscfate.tracking.predict import fate_fraction_table, load_model, predict_cells

    index = tiny_synth.index
    control = index[(index["condition"] == "control") & (index["label"] != "")]
    wanted = {"neuron": 1.0, "astrocyte": 0.3, "oligodendrocyte": 0.15}  # share of each class kept
    rng = np.random.default_rng(0)
    rows = np.concatenate(
        [
            rng.choice(group.index, int(len(group) * wanted[label]), replace=False)
            for label, group in control.groupby("label")
        ]
    )
    crops = list(np.asarray(tiny_synth.images[np.sort(rows)]))
    cells = index.loc[np.sort(rows), ["source", "label"]].assign(condition="plateA")
    mlflow.set_tracking_uri(registry["uri"])
    model = load_model(
        MlflowClient(registry["uri"]).get_run(registry["good"]).data.tags["nscfate.model_uri"]
    )
    predictions, estimator = predict_cells(model, crops, cells)
    table = fate_fraction_table(predictions, estimator).set_index("fate").loc[list(CLASSES)]
    truth = table["true_frac"]
    assert truth["neuron"] > 0.6  # the mix really is skewed
    raw_err = (table["raw_frac"] - truth).abs().mean()
    est_err = (table["est_frac"] - truth).abs().mean()
    assert est_err < raw_err, (raw_err, est_err)
    assert ((table["ci_low"] <= truth) & (truth <= table["ci_high"])).sum() >= 2


@pytest.mark.parametrize(
    ("model", "make_input", "message"),
    [
        ("models:/no_such_model@champion", "real", "does not resolve"),
        ("models:/nscfate@no_such_alias", "real", "does not resolve"),
        ("0123456789abcdef0123456789abcdef", "real", "no such run"),
        ("models:/nscfate@champion", "empty", "holds no images"),
        ("models:/nscfate@champion", "corrupt", r"cannot read image .*bad\.png"),
        ("models:/nscfate@champion", "rgb", "3 distinct channels"),
    ],
)
def test_predict_bad_input(registry, tmp_path, sample_pngs, model, make_input, message):
    """In-process, in the CLI's order (inputs, then the model): one NscfateError naming the problem."""
    import mlflow

    from nscfate.data.inputs import load_inputs
    from nscfate.tracking.predict import load_model, resolve_model_uri

    folder = _bad_input(tmp_path, sample_pngs, make_input)
    mlflow.set_tracking_uri(registry["uri"])
    with pytest.raises(NscfateError, match=message):
        load_inputs(folder)
        load_model(resolve_model_uri(model, MlflowClient(registry["uri"])))


def _bad_input(tmp_path: Path, sample_pngs, kind: str) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    if kind == "real":
        (folder / "x.png").write_bytes(sample_pngs[0].read_bytes())
    elif kind == "corrupt":
        (folder / "bad.png").write_bytes(b"not a png")
    elif kind == "rgb":
        rgb = np.zeros((20, 20, 3), np.uint8)
        rgb[..., 1] = 200
        Image.fromarray(rgb).save(folder / "colour.png")
    return folder


def test_predict_cli_fails_with_one_line_and_writes_nothing(registry, tmp_path, sample_pngs):
    folder = _bad_input(tmp_path, sample_pngs, "corrupt")
    model, message = "models:/nscfate@champion", r"cannot read image .*bad\.png"
    code, _, stderr = run_cli(
        "predict",
        f"model={model}",
        f"input={folder}",
        f"output={tmp_path}/out.csv",
        f"tracking.uri={registry['uri']}",
        f"hydra.run.dir={tmp_path}/h",
    )
    assert code == 1 and re.search(message, stderr), stderr[-1500:]
    assert "Traceback" not in stderr and not (tmp_path / "out.csv").exists()


def _post(url: str, body: dict) -> dict:
    """POST a JSON request to a model server's /invocations; its JSON answer."""
    request = urllib.request.Request(
        f"{url}/invocations",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def _readme_block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if marker in b)


def test_model_server_answers_like_predict(registry, tmp_path, sample_pngs):
    with model_server(registry["uri"]) as url:
        crops = tmp_path / "crops"
        crops.mkdir()
        for p in sample_pngs:
            (crops / p.name).write_bytes(p.read_bytes())
        # the README's own example, run as written (port and folder adjusted)
        script = (
            _readme_block("/invocations")
            .replace("http://127.0.0.1:5001", url)
            .replace("crops/*.png", f"{crops}/*.png")
        )
        proc = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"),
        )
        assert proc.returncode == 0, proc.stderr
        answer = json.loads(proc.stdout)["predictions"]
        served = pd.DataFrame(answer)
        # each crop's day of culture rides along as the model's `days` parameter
        request = json.loads((tmp_path / "request.json").read_text())
        with_days = _post(url, request | {"params": {"days": [1.0] * len(sample_pngs)}})
        assert len(with_days["predictions"]) == len(sample_pngs)
        with pytest.raises(urllib.error.HTTPError) as refused:
            _post(url, request | {"params": {"days": [1.0, 3.0]}})
        assert "one day per crop" in refused.value.read().decode()
    code, _, stderr = run_cli(
        "predict",
        "model=models:/nscfate@champion",
        f"input={crops}",
        f"output={tmp_path}/pred.csv",
        f"tracking.uri={registry['uri']}",
        f"hydra.run.dir={tmp_path}/h",
    )
    assert code == 0, stderr[-3000:]
    local = pd.read_csv(tmp_path / "pred.csv")
    for c in ("astrocyte", "oligodendrocyte", "neuron"):
        assert np.allclose(served[c].to_numpy(), local[f"p_{c}"].to_numpy(), atol=1e-5)
    assert served["fate"].tolist() == local["fate"].tolist()
