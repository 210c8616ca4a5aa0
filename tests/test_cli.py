import subprocess
import sys

import pytest

from xpmlp.cli import main


def test_train_xor_reaches_full_accuracy(capsys):
    assert main(["train", "xor", "--device", "cpu", "--epochs", "20"]) == 0
    out = capsys.readouterr().out
    assert "xor on numpy on cpu" in out
    assert "accuracy: 1.0000" in out


def test_train_sine_reports_mse(capsys):
    assert main(["train", "sine", "--device", "cpu", "--epochs", "200"]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("mse:")][0]
    assert float(line.split()[1]) < 0.01


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backend numpy: ok" in out and "backend cupy:" in out


def test_python_dash_m_and_bad_arguments():
    done = subprocess.run([sys.executable, "-m", "xpmlp", "train", "mnistt"], capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice: 'mnistt'" in done.stderr


def test_unknown_optimizer_is_reported():
    with pytest.raises(ValueError, match="unknown optimizer 'foo'"):
        main(["train", "xor", "--optimizer", "foo", "--epochs", "1"])
