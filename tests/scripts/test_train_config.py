"""`cifar-train --config RUN/config.json` reruns the recipe a run recorded; `--print-config`
prints it; configs of another version or with unknown fields are refused (exit 2)."""

import json

import pytest

from tests.conftest import TINY
from tests.processes import run_training


@pytest.mark.slow
def test_a_recorded_config_reruns_the_same_losses_and_takes_overrides(tmp_path):
    first, rerun = tmp_path / "first", tmp_path / "rerun"
    flags = [*TINY, "--epochs", "2", "--seed", "3", "--lr", "0.03", "--no-export"]
    flags += ["--set", "optim.label_smoothing=0.1"]
    done = run_training(*flags, "--out", str(first), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout[done.stdout.index("{") :])  # --json: the figures
    assert (
        printed["test_accuracy"]
        == json.loads((first / "metrics.json").read_text())["test_accuracy"]
    )
    recorded = first / "config.json"
    again = run_training("--config", str(recorded), "--out", str(rerun), "--quiet", "--no-export")
    assert again.returncode == 0, again.stderr[-2000:]
    # The run ends with a summary a person reads, not a JSON dump.
    metrics = json.loads((rerun / "metrics.json").read_text())
    assert f"test accuracy {metrics['test_accuracy']:.2%}" in again.stdout
    assert "images/s" in again.stdout and f"outputs in {rerun}" in again.stdout
    losses = [
        [r["train_loss"] for r in json.loads((d / "history.json").read_text())]
        for d in (first, rerun)
    ]
    assert losses[0] == losses[1]
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, rerun))
    assert a["train"].pop("out_dir") != b["train"].pop("out_dir")
    # The rerun trains in the precision the first one resolved "auto" to.
    assert (
        a.pop("resolved")["train.precision"]["chosen"]
        == b.pop("resolved")["train.precision"]["requested"]
    )
    assert a == b
    # --set applies on top; --print-config shows it and trains nothing.
    shown = run_training("--config", str(recorded), "--set", "optim.lr=0.5", "--print-config")
    assert shown.returncode == 0, shown.stderr
    printed = json.loads(shown.stdout)
    assert printed["optim"]["lr"] == 0.5 and printed["train"]["seed"] == 3
    assert printed["optim"]["label_smoothing"] == 0.1 and printed["train"]["out_dir"] is None


@pytest.mark.parametrize(
    "content, names",
    [
        ({"version": 7}, "config field version is 7"),
        ({"optim": {"foo": 1}}, "unknown config key 'optim.foo'"),
        ({"optim": {"lr": "fast"}}, "optim.lr: cannot parse 'fast'"),
        ([1, 2], "holds no config object"),
    ],
)
def test_a_config_of_another_version_or_with_unknown_fields_is_refused(tmp_path, content, names):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(content))
    done = run_training("--config", str(path), "--print-config")
    assert done.returncode == 2 and names in done.stderr, done.stderr
    missing = run_training("--config", str(tmp_path / "none.json"))
    assert missing.returncode == 2 and "writes DIR/config.json" in missing.stderr
