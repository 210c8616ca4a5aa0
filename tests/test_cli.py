import os
import subprocess
import sys
import time

import numpy as np
import pytest

import xpmlp
from xpmlp.cli import main


def _metric(out: str, name: str) -> float:
    return float(out.split(name + ":")[1].split()[0])


def test_train_xor_reaches_full_accuracy(capsys):
    assert main(["train", "xor", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "on numpy on cpu" in out and _metric(out, "accuracy") == 1.0


def test_train_sine_reports_mse(capsys):
    assert main(["train", "sine", "--device", "cpu"]) == 0
    assert _metric(capsys.readouterr().out, "mse") < 0.01


def test_train_mnist_small_budget(capsys, data_dir):
    if data_dir is None or not (data_dir / "mnist").is_dir():
        pytest.skip("real MNIST not in $XPMLP_DATA (the download path is tested in test_datasets)")
    assert main(["train", "mnist", "--device", "cpu", "--epochs", "1", "--hidden", "64"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "samples/s:" in out
    assert _metric(out, "test accuracy") > 0.93


def _csv(tmp_path, name, frame_text):
    path = tmp_path / name
    path.write_text(frame_text)
    return str(path)


def test_train_csv_classification_with_string_labels(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 2)) * [100, 0.01] + [500, 0]  # unscaled on purpose
    label = np.where((X[:, 0] - 500) / 100 + X[:, 1] / 0.01 > 0, "yes", "no")
    rows = "\n".join(f"{a},{b},{c}" for (a, b), c in zip(X, label))
    path = _csv(tmp_path, "c.csv", "size,weight,sick\n" + rows + "\n")
    assert main(["train", "csv", path, "--target", "sick", "--device", "cpu", "--epochs", "30"]) == 0
    out = capsys.readouterr().out
    assert "classification of 'sick' into 2 classes" in out
    assert _metric(out, "held out accuracy") > 0.9


def test_train_csv_regression(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X = rng.uniform(-2, 2, size=(400, 2))
    y = 3 * X[:, 0] - X[:, 1] ** 2 + 10
    rows = "\n".join(f"{a},{b},{c}" for (a, b), c in zip(X, y))
    path = _csv(tmp_path, "r.csv", "a,b,target\n" + rows + "\n")
    assert main(["train", "csv", path, "--target", "target", "--device", "cpu", "--epochs", "40"]) == 0
    out = capsys.readouterr().out
    assert "regression of 'target'" in out and _metric(out, "held out r2") > 0.9


@pytest.mark.parametrize("content,target,message,status", [
    ("a,b\n1,2\n", "c", "no column 'c' (--target); columns are: a, b", 2),
    ("a,b,y\n1,2,0\n1,x,1\n", "y", "feature column 'b', row 2: 'x' is missing or not a number", 1),
    ("a,b,y\n1,2,0\n1,3,\n", "y", "target column 'y' is empty or NaN in row 2", 1),
    ("", "y", "the file is empty", 1),
    ("\n\n", "y", "the file is empty", 1),
    ("a,b,y\n", "y", "has a header row (a, b, y) but no data rows", 1),
    ("a,b,y\n1,2,3\n", "c", "no column 'c' (--target)", 2),
])
def test_train_csv_bad_input_names_the_problem(tmp_path, capsys, content, target, message, status):
    """A wrong --target is a usage error (2); a file that cannot be used is a failure (1)."""
    path = _csv(tmp_path, "bad.csv", content)
    assert main(["train", "csv", path, "--target", target, "--device", "cpu", "--epochs", "1"]) == status
    err = capsys.readouterr().err
    assert f"xpmlp: error: {path}: " in err and message in err and "Traceback" not in err


def test_missing_csv_file_or_folder_is_a_usage_error(tmp_path, capsys):
    assert main(["train", "csv", "/nonexistent/x.csv", "--target", "y"]) == 2
    assert "/nonexistent/x.csv: file not found" in capsys.readouterr().err
    assert main(["train", "csv", str(tmp_path), "--target", "y"]) == 2
    assert "is a folder, not a CSV file" in capsys.readouterr().err
    assert main(["train", "mnist", "--data", str(tmp_path / "nope")]) == 2
    assert "--data " + str(tmp_path / "nope") + ": no such folder" in capsys.readouterr().err


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backend numpy: ok" in out and "backend cupy:" in out


def test_python_dash_m_and_bad_arguments():
    done = subprocess.run([sys.executable, "-m", "xpmlp", "train", "mnistt"], capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice: 'mnistt'" in done.stderr


@pytest.mark.parametrize("args,message", [
    (["--optimizer", "foo"], "argument --optimizer: invalid choice: 'foo'"),
    (["--activation", "relux"], "argument --activation: invalid choice: 'relux'"),
    (["--lr", "-0.1"], "argument --lr: must be > 0, got -0.1"),
    (["--lr", "0"], "argument --lr: must be > 0, got 0"),
    (["--lr", "nan"], "argument --lr: must be > 0, got nan"),
    (["--lr-decay", "0"], "argument --lr-decay: must be > 0, got 0"),
    (["--lr-decay", "-2"], "argument --lr-decay: must be > 0, got -2"),
    (["--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    (["--epochs", "two"], "argument --epochs: 'two' is not an integer"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--hidden", "16", "0"], "argument --hidden: must be >= 1, got 0"),
    (["--dropout", "1"], "argument --dropout: must be >= 0 and < 1, got 1"),
    (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["--device", "tpu"], "--device: unknown device 'tpu'"),
])
def test_bad_option_values_are_usage_errors(capsys, args, message):
    """Refused before any work, with exit status 2 and the option named; no traceback."""
    assert main(["train", "xor", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_save_folder_is_checked_before_training(tmp_path, capsys, monkeypatch):
    trained = []
    monkeypatch.setattr(xpmlp.MLP, "fit", lambda *a, **k: trained.append(1))
    (tmp_path / "file").write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    cases = [(tmp_path / "typo" / "m.safetensors", "the folder " + str(tmp_path / "typo") + " does not exist"),
             (tmp_path, "is a folder; give a file name"),
             (tmp_path / "file" / "m.safetensors", "is not a folder")]
    if os.geteuid() != 0:  # root may write anywhere
        cases.append((locked / "m.safetensors", "no permission to write in the folder"))
    for path, message in cases:
        assert main(["train", "xor", "--device", "cpu", "--save", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"--save {path}: " in err and message in err, err
    assert trained == [] and (tmp_path / "file").read_text() == "x"


def test_save_writes_the_model(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    assert main(["train", "xor", "--device", "cpu", "--epochs", "1", "--save", str(path)]) == 0
    assert xpmlp.load(path).layers[0].params["W"].shape[0] == 2


def test_divergence_and_interrupt_are_one_line_failures(capsys, monkeypatch):
    from xpmlp.train import DivergenceError

    def diverge(*args, **kwargs):
        raise DivergenceError("the training loss became nan in epoch 1")

    monkeypatch.setattr(xpmlp.MLP, "fit", diverge)
    assert main(["train", "xor", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "xpmlp: error: the training loss became nan in epoch 1"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(xpmlp.MLP, "fit", interrupt)
    assert main(["train", "xor", "--device", "cpu"]) == 130
    assert capsys.readouterr().err.strip() == "xpmlp: interrupted"


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "xpmlp", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "XPMLP_DEVICE": "cpu"})


def test_exit_statuses_through_a_real_process(tmp_path):
    """Usage 2, failure 1 (bad data, a real diverged run), and never a traceback."""
    usage = _run("train", "sine", "--lr", "-1")
    assert usage.returncode == 2 and "argument --lr: must be > 0" in usage.stderr
    empty = tmp_path / "empty.csv"
    empty.write_text("a,b\n")
    failed = _run("train", "csv", str(empty), "--target", "b")
    assert failed.returncode == 1 and "but no data rows" in failed.stderr
    diverged = _run("train", "sine", "--optimizer", "sgd", "--lr", "1e20", "--epochs", "2",
                    "--save", str(tmp_path / "m.safetensors"))
    assert diverged.returncode == 1 and "xpmlp: error: the training loss became" in diverged.stderr
    assert not (tmp_path / "m.safetensors").exists()
    for done in (usage, failed, diverged):
        assert "Traceback" not in done.stderr, done.stderr


def test_names_are_case_insensitive(capsys):
    assert main(["train", "xor", "--device", "cpu", "--activation", "TanH", "--optimizer", "SGD", "--epochs", "1"]) == 0
    assert "tanh" in capsys.readouterr().out


def test_ctrl_c_in_a_real_process_is_a_short_message():
    import signal

    if sys.platform == "win32":
        pytest.skip("SIGINT to a child process is POSIX-only")
    child = subprocess.Popen([sys.executable, "-m", "xpmlp", "train", "sine", "--epochs", "100000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "XPMLP_DEVICE": "cpu", "PYTHONUNBUFFERED": "1"})
    assert child.stdout.readline().startswith("xpmlp: MLP")  # main is running: training starts now
    time.sleep(0.3)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130 and err.strip().endswith("xpmlp: interrupted") and "Traceback" not in err, err
