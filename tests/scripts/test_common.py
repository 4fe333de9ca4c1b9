import pytest

from pipeline.config import ConfigError
from pipeline.data.cifar_files import DataError
from pipeline.errors import NonFiniteLossError, UserError
from pipeline.runtime.distribute import StrategyError
from scripts.common import run_cli


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
