import pytest

from pipeline.config import ConfigError
from pipeline.data.cifar_files import DataError
from pipeline.errors import NonFiniteLossError, UserError
from pipeline.runtime.distribute import StrategyError
from scripts.exits import run_cli


def _exit_code(error: Exception) -> int:
    def body():
        raise error

    return run_cli(body)()


@pytest.mark.parametrize(
    "error", [ConfigError("c"), DataError("d"), StrategyError("s"), UserError("u")]
)
def test_every_user_error_exits_2_with_one_line(error, capsys):
    assert _exit_code(error) == 2
    err = capsys.readouterr().err
    assert err == f"error: {error}\n"


def test_divergence_exits_3(capsys):
    assert _exit_code(NonFiniteLossError("training loss became nan")) == 3
    assert "training loss became nan" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback():
    # An internal ValueError is not the user's fault: it must not be turned into exit 2.
    with pytest.raises(ValueError, match="internal"):
        _exit_code(ValueError("internal"))
    with pytest.raises(TypeError):
        _exit_code(TypeError("internal"))


CLIS = ("bench", "data", "evaluate", "export", "notebook", "predict", "train", "tune")


def _cli_exit(module: str, error: BaseException, monkeypatch) -> int:
    """The exit code of a CLI whose body raises `error` (its first call, parse, does)."""
    import importlib

    cli = importlib.import_module(f"scripts.{module}")

    def raise_error(argv=None):
        raise error

    monkeypatch.setattr(cli, "parse", raise_error)
    return cli.main()


@pytest.mark.parametrize("module", CLIS)
def test_every_cli_maps_each_exception_to_its_exit_code(module, monkeypatch, capsys):
    import signal

    from pipeline.errors import (
        EXIT_DIVERGED,
        EXIT_INTERRUPTED,
        EXIT_USER_ERROR,
        EXIT_WORKER_LOST,
        Preempted,
        WorkerLostError,
    )

    expected = [
        (UserError("bad flag"), EXIT_USER_ERROR),
        (ConfigError("bad key"), EXIT_USER_ERROR),
        (NonFiniteLossError("loss nan"), EXIT_DIVERGED),
        (WorkerLostError("lost tuner1"), EXIT_WORKER_LOST),
        (Preempted(signal.SIGTERM, "stopped by SIGTERM"), 128 + signal.SIGTERM),
        (Preempted(signal.SIGINT, "stopped by SIGINT"), 128 + signal.SIGINT),
        (KeyboardInterrupt(), EXIT_INTERRUPTED),
    ]
    for error, code in expected:
        assert _cli_exit(module, error, monkeypatch) == code, (module, error)
    assert (EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_WORKER_LOST, EXIT_INTERRUPTED) == (2, 3, 4, 130)
    err = capsys.readouterr().err
    assert "error: bad flag" in err and "error: lost tuner1" in err and "stopped by SIGTERM" in err


class _Terminal:
    """A stdout that says it is a terminal, holding what was written."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_a_stop_message_starts_on_a_line_of_its_own_after_a_progress_bar(monkeypatch, capsys):
    import signal

    from pipeline.errors import Preempted

    terminal = _Terminal()
    monkeypatch.setattr("sys.stdout", terminal)

    def body():
        terminal.write("epoch 1/3 12/98 [==>....] loss: 2.1 acc: 0.1507")  # no newline
        raise Preempted(signal.SIGTERM, "stopped by SIGTERM at epoch 1, step 12/98")

    assert run_cli(body)() == 128 + signal.SIGTERM
    assert terminal.text.endswith("acc: 0.1507\n")
    assert capsys.readouterr().err == "stopped by SIGTERM at epoch 1, step 12/98\n"


def test_cifar_tune_list_names_every_space_and_its_hyperparameters(capsys):
    from scripts import tune
    from tuning.space import SPACES

    assert tune.parse(["--list"]).list
    tune.list_spaces()
    shown = capsys.readouterr().out
    for name in SPACES:
        assert f"{name}" in shown
    assert "airbench (default): around challenge_airbench94" in shown
    assert "hyperparameters: " in shown and "lr" in shown
