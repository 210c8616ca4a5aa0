import subprocess
import sys

import numpy as np
import pytest

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


@pytest.mark.parametrize("content,target,message", [
    ("a,b\n1,2\n", "c", "no column 'c'; columns are: a, b"),
    ("a,b,y\n1,2,0\n1,x,1\n", "y", "feature column 'b', row 2: 'x' is missing or not a number"),
    ("a,b,y\n1,2,0\n1,3,\n", "y", "target column 'y' is empty or NaN in row 2"),
])
def test_train_csv_bad_input_names_the_problem(tmp_path, capsys, content, target, message):
    path = _csv(tmp_path, "bad.csv", content)
    assert main(["train", "csv", path, "--target", target, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and message in err


def test_missing_csv_file(capsys):
    assert main(["train", "csv", "/nonexistent/x.csv", "--target", "y"]) == 2
    assert "/nonexistent/x.csv: file not found" in capsys.readouterr().err


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backend numpy: ok" in out and "backend cupy:" in out


def test_python_dash_m_and_bad_arguments():
    done = subprocess.run([sys.executable, "-m", "xpmlp", "train", "mnistt"], capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice: 'mnistt'" in done.stderr


def test_unknown_optimizer_is_reported(capsys):
    assert main(["train", "xor", "--optimizer", "foo", "--epochs", "1"]) == 2
    assert "unknown optimizer 'foo'" in capsys.readouterr().err
