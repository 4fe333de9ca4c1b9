import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras_tuner as kt
import pytest

from tests.conftest import REPO, tiny_config
from tests.processes import ENV
from tuning import report, space

# The default search (airbench space, Hyperband over a PFLOP budget) made tiny: a small
# budget, small synthetic splits, the base's batch small (the space adds it to its choices).
TINY_SEARCH = [
    "--synthetic",
    "--set",
    "data.synthetic_examples=1024",
    "--batch-size",
    "64",
    "--set",
    "data.val_examples=128",
    "--set",
    "model.params.size=tiny",
    "--budget-pflops",
    "0.0005",
]


def _records(out: Path) -> dict:
    """{trial id: its record} from the search's histories/ folder."""
    return {p.stem: json.loads(p.read_text()) for p in (out / "histories").iterdir()}


def _peaks(out: Path) -> dict:
    return {
        trial_id: max(row["val_accuracy"] for row in r["history"])
        for trial_id, r in _records(out).items()
    }


def _tune(*args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "scripts.tune", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**ENV, **(env or {})},
    )


def _tags(folder: Path) -> dict:
    """{tag: [values]} of the TensorBoard events in `folder` (not its subfolders)."""
    import tensorflow as tf

    tags = collections.defaultdict(list)
    for path in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor) if value.HasField("tensor") else None
                tags[value.tag].append(tensor)
    return tags


def _assert_hparams_dashboard(logdir: Path, peaks: dict) -> None:
    """The search space at the root; one run per trial with its hyperparameters and its
    val accuracy per epoch (what TensorBoard's HParams plugin reads)."""
    assert "_hparams_/experiment" in _tags(logdir)
    runs = {p.name: _tags(p) for p in logdir.glob("trial_*")}
    assert sorted(runs) == sorted(f"trial_{t}" for t in peaks)
    for trial_id, peak in peaks.items():
        tags = runs[f"trial_{trial_id}"]
        assert "_hparams_/session_start_info" in tags
        assert "_hparams_/session_end_info" in tags  # the dashboard's Status column
        assert max(float(v) for v in tags["val_accuracy"]) == pytest.approx(peak)


@pytest.mark.slow
def test_search_writes_best_resumes_and_reports(tmp_path):
    out = str(tmp_path / "s")
    args = [
        "--tuner",
        "random",
        "--max-trials",
        "2",
        "--max-epochs",
        "1",
        "--out",
        out,
        *TINY_SEARCH,
    ]
    first = _tune(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    best = json.loads((tmp_path / "s" / "best.json").read_text())
    assert best["finished_trials"] == 2
    # best.json names the trial whose recorded curve peaks highest, with that peak.
    peaks = _peaks(tmp_path / "s")
    assert best["val_accuracy"] == pytest.approx(max(peaks.values()))
    assert peaks[best["trial_id"]] == pytest.approx(best["val_accuracy"])
    assert best["config"]["model"]["name"] == "custom_convnet"
    _assert_hparams_dashboard(tmp_path / "s" / "tensorboard", peaks)
    again = _tune(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[trial" not in again.stdout, "finished trials are not rerun"
    assert json.loads((tmp_path / "s" / "best.json").read_text())["trial_id"] == best["trial_id"]
    rep = _tune("report", "--out", out)
    assert rep.returncode == 0, rep.stderr[-3000:]
    text = (tmp_path / "s" / "report.md").read_text()
    assert "## Leaderboard" in text and "per hyperparameter" in text
    memory = [json.loads(line) for line in (tmp_path / "s" / "memory.jsonl").open()]
    assert [row["trial_id"] for row in memory] == sorted({row["trial_id"] for row in memory})
    assert len(memory) == 2 and all(row["resident_mib"] > 100 for row in memory)
    assert "## Memory" in text and ": 2 trials, first" in text
    assert (tmp_path / "s" / "accuracy_vs_hyperparameters.png").stat().st_size > 1000
    # --overwrite starts afresh: the finished trials run again.
    fresh = _tune(*args, "--overwrite")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "[trial" in fresh.stdout, "the search started again"
    assert json.loads((tmp_path / "s" / "best.json").read_text())["finished_trials"] == 2


@pytest.mark.slow
def test_distributed_search_survives_a_killed_worker(tmp_path):
    out = tmp_path / "d"
    log = tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "scripts.tune", "--tuner", "random", "--max-trials", "3"]
    cmd += ["--max-epochs", "2", "--out", str(out), "--local-workers", "2", *TINY_SEARCH]
    cmd += ["--set", "data.synthetic_examples=1024"]
    code, victim = _kill_during_a_trial(cmd, log, "tuner1")
    assert code == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert f"tuner1 (pid {victim}) was killed by SIGKILL; restarting it" in text
    best = json.loads((out / "best.json").read_text())
    assert best["finished_trials"] == 3
    # memory.jsonl gains a row (trial id, process) each time any worker finishes a trial:
    # the killed worker's trial is rerun by its restarted process, and finishes once.
    rows = [json.loads(line) for line in (out / "memory.jsonl").open()]
    runs = collections.Counter(row["trial_id"] for row in rows)
    assert len(runs) == 3 and set(runs.values()) == {1}, runs
    assert len({row["pid"] for row in rows}) >= 2, "both workers ran trials"
    # Every trial, whichever worker trained it, is a run of the HParams dashboard.
    _assert_hparams_dashboard(out / "tensorboard", _peaks(out))


@pytest.mark.slow
def test_a_lost_tuner_chief_ends_the_search_with_exit_4_and_the_rerun_finishes_it(tmp_path):
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "scripts.tune", "--tuner", "random", "--max-trials", "2"]
    cmd += ["--max-epochs", "1", "--out", str(out), "--local-workers", "1", *TINY_SEARCH]
    log = tmp_path / "log.txt"
    code, chief = _kill_during_a_trial(cmd, log, "chief")
    assert code == 4, log.read_text()[-3000:]
    text = log.read_text()
    assert f"the search lost chief (pid {chief}), which was killed by SIGKILL" in text, text[-3000:]
    assert "Run the same command again to resume it" in text
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "best.json").read_text())["finished_trials"] == 2


def _kill_during_a_trial(cmd: list[str], log: Path, tuner_id: str) -> tuple[int, int]:
    """Starts a distributed search writing to `log`, kill -9s `tuner_id` once a trial has
    started; returns the search's exit code and the killed pid."""
    with log.open("w") as sink:
        search = subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=ENV)
        deadline = time.monotonic() + 300
        while "[trial" not in log.read_text():
            assert search.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        victim = _tuner_pid(search.pid, tuner_id)
        os.kill(victim, signal.SIGKILL)
        return search.wait(timeout=600), victim


def _tuner_pid(launcher: int, tuner_id: str) -> int:
    """The pid of the launcher's child with KERASTUNER_TUNER_ID=tuner_id."""
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"KERASTUNER_TUNER_ID={tuner_id}".encode() in environ:
            return int(child)
    raise AssertionError(f"no {tuner_id} among the children of {launcher}")


def test_report_ranks_hyperparameters(tmp_path):
    trials = [
        {"trial_id": str(i), "score": s, "values": {"pool": p, "lr": lr}, "history": []}
        for i, (s, p, lr) in enumerate(
            [
                (0.9, "max", 0.1),
                (0.8, "max", 0.05),
                (0.5, "avg", 0.3),
                (0.4, "avg", 0.4),
                (0.85, "max", 0.08),
            ]
        )
    ]
    effects = report.hyperparameter_effects(trials)
    assert effects["pool"]["by_value"]["max"]["mean"] == pytest.approx(0.85)
    assert effects["lr"]["spearman"] == pytest.approx(-0.6)  # 1 - 6 * 32 / (5 * 24)
    with pytest.raises(ValueError, match="no finished trial"):
        report.write_report(str(tmp_path))


def _float_space(name, sampling):
    config = {"name": name, "min_value": 1e-6, "max_value": 1e-3, "sampling": sampling}
    return {"class_name": "Float", "config": config}


def test_continuous_hyperparameters_follow_the_search_space_not_the_trial_count():
    # Two trials, two weight decays: still a continuous log range, not two categories.
    space = [
        _float_space("weight_decay", "log"),
        {"class_name": "Int", "config": {"name": "depth", "min_value": 1, "max_value": 2}},
        {"class_name": "Choice", "config": {"name": "pool", "values": ["max", "avg"]}},
    ]
    trials = [
        {
            "trial_id": "0",
            "score": 0.6,
            "values": {"weight_decay": 2.0747815131874067e-05, "depth": 1, "pool": "max"},
            "space": space,
        },
        {
            "trial_id": "1",
            "score": 0.5,
            "values": {"weight_decay": 0.0006014497388954821, "depth": 2, "pool": "max"},
            "space": space,
        },
    ]
    assert report.scales(trials) == {
        "weight_decay": "log",
        "depth": "categorical",
        "pool": "categorical",
    }
    effects = report.hyperparameter_effects(trials)
    assert effects["weight_decay"]["kind"] == "continuous"
    assert report._finding("weight_decay", effects["weight_decay"]) == [
        "- **weight_decay** (log range): 2 trials, too few to tell."
    ]
    assert report._finding("pool", effects["pool"]) == []  # never varied


def test_leaderboard_shows_what_varied_with_three_significant_digits():
    from tuning.search import leaderboard

    rows = leaderboard(
        [
            ("0008", 0.524, {"sgd_lr": 1.7133260088761233, "pool": "max", "tuner/epochs": 3}),
            ("0007", 0.51612, {"sgd_lr": 0.1886669557529626, "pool": "max"}),
        ]
    )
    assert rows[0] == "Same in every trial listed: pool=max."
    assert rows[2] == "| rank | trial | val accuracy | sgd_lr |"
    assert rows[4:] == ["| 1 | 0008 | 0.524 | 1.71 |", "| 2 | 0007 | 0.516 | 0.189 |"]


def test_search_reexecutes_itself_with_few_malloc_arenas(monkeypatch):
    from scripts import tune

    calls = []
    monkeypatch.setattr(tune.sys, "platform", "linux")
    monkeypatch.setattr(tune.os, "execv", lambda exe, argv: calls.append(argv))
    # setenv first so that monkeypatch restores the variable's absence afterwards: the
    # code under test sets it, and it must not leak into the rest of the session.
    monkeypatch.setenv("MALLOC_ARENA_MAX", "unset")
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    tune.few_malloc_arenas(["--max-trials", "3"])
    assert tune.os.environ["MALLOC_ARENA_MAX"] == "2"
    assert calls == [[sys.executable, "-m", "scripts.tune", "--max-trials", "3"]]
    tune.few_malloc_arenas(["--max-trials", "3"])  # already set: runs on, no second exec
    assert len(calls) == 1


def _hypermodel(base, name="airbench", resource_max=9):
    from pipeline.training import run
    from tuning.hypermodel import SearchHyperModel

    strategy, inputs = run.prepare(base)
    return SearchHyperModel(space.get(name), base, inputs, strategy, resource_max=resource_max)


def _defaults(hypermodel, **values) -> kt.HyperParameters:
    hp = kt.HyperParameters()
    hypermodel.config(hp)  # registers the space at its defaults
    hp.values.update(values)
    return hp


def test_without_a_budget_hyperband_continues_a_trial_on_the_same_schedule():
    base = tiny_config(**{"model.name": "custom_convnet", "model.params": {"size": "tiny"}})
    hypermodel = _hypermodel(base, "notebook")
    hp = _defaults(hypermodel)
    full = hypermodel.fit(hp, hypermodel.build(hp), epochs=3).history
    # Hyperband hands a promoted trial the weights it had and initial_epoch: it trains
    # epoch 3 alone, at epoch 3's learning rate, not a fresh schedule from epoch 1.
    continued = hypermodel.fit(hp, hypermodel.build(hp), epochs=3, initial_epoch=2).history
    assert len(full["lr"]) == 3 and len(continued["lr"]) == 1
    assert continued["lr"][0] == pytest.approx(full["lr"][2])


def test_with_a_budget_hyperband_promotion_carries_its_share_and_restarts(tmp_path):
    import keras

    from pipeline.config import override
    from tuning.search import BudgetHyperband

    base = override(
        tiny_config(**{"model.name": "custom_convnet", "model.params": {"size": "tiny"}}),
        {"train.budget_pflops": 0.0003, "train.epochs": 10},
    )
    hypermodel = _hypermodel(base)
    hypermodel.history_dir = tmp_path / "histories"
    assert hypermodel.restarts_promoted
    compute = {}
    for units in (1, 3, 9):
        # What Hyperband's trial hands fit: its units of 9 (tuner/epochs), and for a
        # promoted trial the epoch its parent reached, which a restart ignores.
        hp = _defaults(hypermodel, **{"tuner/epochs": units, "tuner/initial_epoch": units // 3})
        callback = keras.callbacks.Callback()
        callback.trial = type("Trial", (), {"trial_id": f"u{units}"})()  # as keras-tuner's
        history = hypermodel.fit(hp, hypermodel.build(hp), callbacks=[callback]).history
        record = json.loads((tmp_path / "histories" / f"u{units}.json").read_text())
        assert record["budget_fraction"] == units / 9
        assert record["compute"]["budget_pflops"] == pytest.approx(0.0003 * units / 9)
        assert len(history["val_accuracy"]) == len(record["history"])  # from epoch 1 on
        compute[units] = record["compute"]
    # 3x the share, 3x the images (to the nearest step of 32).
    images = {u: c["train_images"] for u, c in compute.items()}
    assert images[3] == pytest.approx(3 * images[1], abs=32 * 2)
    assert images[9] == pytest.approx(3 * images[3], abs=32 * 2)
    # A promoted trial is built afresh: BudgetHyperband loads no parent's weights.
    tuner = BudgetHyperband(
        hypermodel,
        objective="val_accuracy",
        max_epochs=9,
        directory=str(tmp_path),
        project_name="p",
    )
    promoted = _defaults(hypermodel, **{"tuner/trial_id": "no-such-parent"})
    assert tuner._build_hypermodel(promoted) is not None  # would fail loading the parent


def test_the_search_never_reads_the_test_split(tmp_path, monkeypatch):
    """The whole search, on a stand-in for tfds that records every split asked of it."""
    import numpy as np

    from pipeline.config import ConfigError
    from pipeline.data import sources
    from scripts import tune
    from tuning.search import search

    asked = []

    def load(spec, data_dir):
        asked.append(spec)
        n = int(spec.split(":")[1].rstrip("]")) - int(spec.split("[")[1].split(":")[0] or 0)
        rng = np.random.default_rng(len(asked))
        return sources.Split(
            rng.integers(0, 255, (n, 32, 32, 3), np.uint8), rng.integers(0, 10, n, np.int32)
        )

    fake_builder = type(
        "B", (), {"data_dir": str(tmp_path), "info": type("I", (), {"features": {}})()}
    )
    labels = type("L", (), {"names": [f"c{i}" for i in range(10)]})()
    fake_builder.info.features = {"label": labels}
    monkeypatch.setattr(sources, "ensure_prepared", lambda cfg: None)
    monkeypatch.setattr(sources, "builder", lambda data_dir: fake_builder)
    monkeypatch.setattr(sources, "_load_tfds_split", load)
    args = tune.parse(
        ["--tuner", "random", "--max-trials", "1", "--out", str(tmp_path / "s"), "--batch-size",
         "64", "--train-examples", "1024", "--val-examples", "128", "--budget-pflops", "0.0002",
         "--set", "model.params.size=tiny", "--precision", "float32",
         # the airbench base's one inter-op thread would size this whole test process's pool
         "--set", "train.cpu_inter_op_threads=0"]
    )  # fmt: skip
    base = tune.base_config(args)
    assert base.data.test_examples == 0
    best = search(base, "random", str(tmp_path / "s"), 1, 9)
    assert best["finished_trials"] == 1
    assert asked and all(spec.startswith("train[") for spec in asked), asked
    with pytest.raises(ConfigError, match="never reads the test split"):
        tune.base_config(tune.parse(["--test-examples", "100"]))


@pytest.mark.parametrize("procid, tuner_id", [("0", "chief"), ("1", "tuner0"), ("3", "tuner2")])
def test_srun_tasks_become_the_tuners_chief_and_workers(monkeypatch, procid, tuner_id):
    from tuning.search import slurm_tuner_env

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("PATH", "")  # CPU nodes: no nvidia-smi
    slurm = {
        "SLURM_PROCID": procid,
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_STEP_NODELIST": "cn[07-08]",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    }
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    assert slurm_tuner_env(port=9100) == {
        "KERASTUNER_TUNER_ID": tuner_id,
        "KERASTUNER_ORACLE_IP": "cn07",
        "KERASTUNER_ORACLE_PORT": "9100",
    }


def _trial(trial_id, score, **extra):
    return {"trial_id": trial_id, "score": score, "values": {"lr": 0.1}, "history": [], **extra}


def test_the_report_says_plainly_when_trials_are_at_chance_or_diverged():
    from tuning import frontier

    trials = [_trial("0", 0.62), _trial("1", 0.122), _trial("2", 0.0, diverged=True)]
    lines = frontier.failure_lines(trials)
    assert "**1 of 3 trials diverged** (val accuracy under 0.15): 2." in lines
    assert "**1 of 3 trials at chance** (val accuracy under 0.15): 1." in lines
    # The new user's search: every trial at chance, and the report says what to do.
    lines = frontier.failure_lines([_trial("0", 0.122), _trial("1", 0.106)])
    assert lines[0] == "**2 of 2 trials at chance** (val accuracy under 0.15): 0, 1."
    assert "No trial learned anything" in lines[1] and "--budget-pflops" in lines[1]
    assert frontier.failure_lines([_trial("0", 0.62)])[0].startswith("Every one of the 1")


def test_the_frontier_marks_hand_recipes_from_their_runs(tmp_path):
    from tuning import frontier

    run = tmp_path / "challenge_airbench94"
    run.mkdir()
    metrics = {"test_accuracy": 0.9, "compute": {"train_pflops": 0.09}, "history": []}
    (run / "metrics.json").write_text(json.dumps({**metrics, "history": [{"seconds": 12.5}]}))
    assert frontier.hand_runs([str(run)]) == [
        {
            "name": "challenge_airbench94",
            "accuracy": 0.9,
            "split": "test",
            "pflops": 0.09,
            "seconds": 12.5,
        }
    ]
    trials = [
        _trial("0", 0.8, compute={"train_pflops": 0.01}, train_seconds=3.0),
        _trial("1", 0.1, compute={"train_pflops": 0.03}, train_seconds=9.0),
    ]
    assert frontier.hand_runs([f"airbench94 at 0.09={run}"])[0]["name"] == "airbench94 at 0.09"
    frontier.plot(trials, frontier.hand_runs([str(run)]), tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="metrics.json does not exist"):
        frontier.hand_runs([str(tmp_path / "nothing")])


@pytest.mark.parametrize("failed, status", [(False, "STATUS_SUCCESS"), (True, "STATUS_FAILURE")])
def test_each_trial_ends_with_a_status_in_the_hparams_dashboard(tmp_path, failed, status):
    import tensorflow as tf
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    from tuning import hparams_board

    history = [{"epoch": 1, "val_accuracy": 0.0 if failed else 0.5}]
    hparams_board.write_trial(tmp_path, "0001", {"lr": 0.1}, history, failed=failed)
    ends = []
    for path in (tmp_path / "tensorboard" / "trial_0001").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "_hparams_/session_end_info":
                    data = plugin_data_pb2.HParamsPluginData.FromString(
                        value.metadata.plugin_data.content
                    )
                    ends.append(api_pb2.Status.Name(data.session_end_info.status))
    assert ends == [status]


def test_report_and_retrain_have_their_own_flags_and_help(capsys):
    from scripts import tune

    args = tune.parse(["report", "--out", "s", "--hand", "airbench94=runs/a"])
    assert (args.action, args.out, args.hand) == ("report", "s", ["airbench94=runs/a"])
    assert tune.parse(["retrain", "--seeds", "4", "5"]).seeds == [4, 5]
    assert tune.parse(["search", "--tuner", "random"]).tuner == "random"
    assert tune.parse([]).action == "search"
    with pytest.raises(SystemExit):
        tune.parse(["report", "--help"])
    shown = capsys.readouterr().out
    assert "cifar-tune report" in shown and "--hand" in shown and "--max-trials" not in shown
    with pytest.raises(SystemExit):
        tune.parse(["report", "--max-trials", "3"])  # a search flag, refused here
