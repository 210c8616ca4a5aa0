"""Datasets on the host (NumPy and pandas): MNIST, UCI heart disease, and toy problems.

Nothing here touches a device: models copy what they need at ``fit``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import struct
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Callable, cast

import numpy as np

__all__ = ["load_mnist", "load_heart_disease", "make_xor", "make_sine", "make_spirals",
           "train_test_split", "mnist_cache_dir", "DataError", "HEART_COLUMNS"]


class DataError(ValueError):
    """A data file is missing, truncated, corrupted or malformed; the message names it.

    Raised by :func:`load_mnist` and :func:`load_heart_disease` (and by a download that failed).
    A subclass of ``ValueError``.

    Examples
    --------
    >>> import os, tempfile
    >>> from xpmlp.datasets import DataError, load_heart_disease
    >>> try:
    ...     load_heart_disease(os.path.join(tempfile.gettempdir(), "no-such-file.data"))
    ... except DataError as e:
    ...     print(str(e).endswith("file not found (the UCI Cleveland file processed.cleveland.data)"))
    True
    """


# -- MNIST ------------------------------------------------------------------------------------
MNIST_FILES = {
    # name: SHA-256 of the *decompressed* IDX content (the original LeCun files), so that
    # re-compressed archives from any mirror verify too.
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_CSV = ("mnist_train.csv", "mnist_test.csv")

# Download limits (module constants, so tests and unusual networks can change them).
DOWNLOAD_READ_TIMEOUT = 30.0  # seconds one read may wait: a server that went silent
DOWNLOAD_DEADLINE = 900.0  # seconds for one whole file: a server that trickles bytes
DOWNLOAD_MAX_BYTES = 32 << 20  # per file; the largest MNIST archive is 9.9 MB
MNIST_MAX_CONTENT = 64 << 20  # decompressed, per file; the largest is 47 MB: bounds a gzip bomb


def mnist_cache_dir() -> Path:
    """Where downloaded MNIST files go: ``$XPMLP_CACHE/mnist`` or ``~/.cache/xpmlp/mnist``.

    ``~/.cache`` is ``$XDG_CACHE_HOME`` when that is set.

    Returns
    -------
    pathlib.Path
        The folder (it may not exist yet).

    Examples
    --------
    >>> from xpmlp.datasets import mnist_cache_dir
    >>> mnist_cache_dir().name
    'mnist'
    """
    root = os.environ.get("XPMLP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "xpmlp")
    return Path(root) / "mnist"


def _open_idx(path: Path, limit: int | None = None) -> bytes:
    """The file's content, decompressed if gzipped; more than ``limit`` bytes is refused."""
    size = -1 if limit is None else limit + 1  # one byte past the limit tells "too big" without reading on
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        data = None if gzipped else f.read(size)
    if gzipped:
        try:
            with gzip.open(path, "rb") as f:
                data = f.read(size)
        except (OSError, EOFError) as e:  # gzip raises these for truncated or damaged archives
            raise DataError(f"{path}: cannot be decompressed ({e}); the file is truncated or corrupted") from None
    assert data is not None  # read in one branch or the other
    if limit is not None and len(data) > limit:
        raise DataError(f"{path}: holds more than {limit} bytes, more than any MNIST file; refused")
    return data


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not) of unsigned bytes into an array of its stated shape.

    Parameters
    ----------
    path : str or path-like
        The file.

    Returns
    -------
    numpy.ndarray of uint8
        The array, of the shape its header states.

    Raises
    ------
    DataError
        If the file is not an IDX file of unsigned bytes, or is truncated or corrupted.
    """
    path = Path(path)
    return _parse_idx(_open_idx(path), path)


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    """The array an IDX file's bytes describe; ``path`` names the file in errors."""
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex()!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(f"{path}: expected {expected} bytes of data for shape {shape}, found "
                        f"{len(data) - header}; the file is truncated or corrupted")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(folder: Path, name: str) -> Path | None:
    for candidate in (folder / (name + ".gz"), folder / name):
        if candidate.is_file():
            return candidate
    return None


def _mnist_in(folder: Path):
    """The MNIST files found in a folder as ("idx", {name: path}) or ("csv", paths), or None."""
    if not folder.is_dir():
        return None
    found = {name: _find_idx(folder, name) for name in MNIST_FILES}
    if all(found.values()):
        return "idx", found
    if all((folder / f).is_file() for f in MNIST_CSV):
        return "csv", [folder / f for f in MNIST_CSV]
    return None


def _read_csv_frame(path: Path, **kwargs):
    """``pandas.read_csv`` whose failures (empty, unreadable, unparsable) are DataErrors naming the file."""
    import pandas as pd

    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None


def _check_numeric(frame, path: Path, hint: str = "") -> None:
    """Refuse the first cell that is not a number (missing values are left to the caller)."""
    import pandas as pd

    for column in frame.columns:
        bad = pd.to_numeric(frame[column], errors="coerce").isna() & frame[column].notna()
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise DataError(f"{path}: row {row + 1}, column {column!r}: {frame[column].iloc[row]!r} is not a number{hint}")


def _read_mnist_csv(path: Path):
    """``label,pixel0..pixel783`` rows, with or without a header line, via pandas."""
    with path.open() as f:
        first = f.readline()
    has_header = any(c.isalpha() for c in first)
    frame = _read_csv_frame(path, header=0 if has_header else None)
    if frame.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (the label, then 784 pixels), found {frame.shape[1]}")
    if len(frame) == 0:
        raise DataError(f"{path}: has a header row but no data rows")
    _check_numeric(frame, path)
    values = frame.to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        row, col = map(int, np.argwhere(np.isnan(values))[0])
        raise DataError(f"{path}: row {row + 1}, column {frame.columns[col]!r} is empty")
    if values.min() < 0 or values[:, 1:].max() > 255 or values[:, 0].max() > 9:
        raise DataError(f"{path}: labels must be 0..9 and pixels 0..255")
    return values[:, 1:].astype(np.uint8), values[:, 0].astype(np.int64)


def _fetch(url: str, out, desc: str, progress: bool) -> None:
    """Copy the body at ``url`` into the open file ``out``, within the deadline and the size cap.

    Reads use ``read1`` (at most one receive each) so that the deadline is checked between
    receives: a server that trickles a byte at a time is given up on after about
    ``DOWNLOAD_DEADLINE`` (plus at most one ``DOWNLOAD_READ_TIMEOUT``), not hours later.
    """
    from tqdm.auto import tqdm

    deadline = time.monotonic() + DOWNLOAD_DEADLINE
    with urllib.request.urlopen(url, timeout=min(DOWNLOAD_READ_TIMEOUT, DOWNLOAD_DEADLINE)) as response:
        declared = (response.headers.get("Content-Length") or "").strip()
        total = int(declared) if declared.isdigit() else None
        if total is not None and total > DOWNLOAD_MAX_BYTES:
            raise DataError(f"{url}: the server announces {total} bytes, more than the {DOWNLOAD_MAX_BYTES} "
                            "allowed for one file; refused without reading it")
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress) as bar:
            while chunk := response.read1(1 << 16):
                received += len(chunk)
                if received > DOWNLOAD_MAX_BYTES:
                    raise DataError(f"{url}: sent more than the {DOWNLOAD_MAX_BYTES} bytes allowed for one file; "
                                    "stopped")
                if time.monotonic() > deadline:
                    raise DataError(f"{url}: not complete after {DOWNLOAD_DEADLINE:g} s ({received} bytes "
                                    f"received{f' of {total}' if total else ''}); gave up")
                out.write(chunk)
                bar.update(len(chunk))
        if total is not None and received != total:
            raise DataError(f"{url}: the transfer ended after {received} of the {total} bytes announced")


def _remove_stale_parts(folder: Path, name: str) -> None:
    """Delete temporary files left by a download that was killed (SIGKILL, power loss).

    Only files older than a download can last: a part file another process is still writing
    is younger than ``DOWNLOAD_DEADLINE`` plus one read timeout.
    """
    too_old = time.time() - (DOWNLOAD_DEADLINE + DOWNLOAD_READ_TIMEOUT)
    for part in folder.glob(f".{name}.*.part"):
        with contextlib.suppress(FileNotFoundError):  # another process removed it first
            if part.stat().st_mtime < too_old:
                part.unlink()


def _download(name: str, dest: Path, mirrors, progress: bool) -> None:
    """Fetch ``name.gz`` from the first mirror that answers, verify it, then move it into place.

    The archive is written to a temporary ``.part`` file beside ``dest`` and renamed only after
    its checksum matches; whatever happens (an error, a deadline, Ctrl-C), the part file is
    removed, so no half-written or unverified file is left behind.
    """
    _remove_stale_parts(dest.parent, name)
    errors = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + name + ".gz"
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{name}.", suffix=".part")
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out, name, progress)
            digest = hashlib.sha256(_open_idx(Path(tmp), limit=MNIST_MAX_CONTENT)).hexdigest()
            if digest != MNIST_FILES[name]:
                raise DataError(f"checksum mismatch for {url}: SHA-256 of the content is {digest}, "
                                f"expected {MNIST_FILES[name]}; the download is corrupted")
            os.replace(tmp, dest)
            tmp = None
            return
        except (urllib.error.URLError, http.client.HTTPException, OSError, DataError) as e:
            errors.append(f"{url}: {e}")
        finally:
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
    if any("checksum mismatch" in e or "corrupted" in e for e in errors):
        raise DataError("MNIST download failed verification:\n  " + "\n  ".join(errors))
    raise DataError("could not download MNIST:\n  " + "\n  ".join(errors))


def _read_cached(cache: Path, name: str, download: bool, mirrors, progress: bool) -> np.ndarray:
    """One MNIST file from the cache, verified against its SHA-256 before use.

    The cache holds what xpmlp downloaded, so its files must be the originals: one that fails
    (a damaged disk, an edit, a file put there by hand) is downloaded again when ``download``
    is true, and refused with a message naming it otherwise. Files in ``path`` or
    ``$XPMLP_DATA`` are the user's and are not checked, so MNIST-format data sets with the same
    file names (Fashion-MNIST) work there.
    """
    path = cast(Path, _find_idx(cache, name))  # the caller found it there
    data = _open_idx(path, limit=MNIST_MAX_CONTENT)
    digest = hashlib.sha256(data).hexdigest()
    if digest != MNIST_FILES[name]:
        problem = (f"{path}: the cached file's content has SHA-256 {digest}, expected {MNIST_FILES[name]}; "
                   "it is corrupted or not the original MNIST file")
        if not download:
            raise DataError(problem + ". Delete it, or call load_mnist with download=True to download it again")
        warnings.warn(problem + "; downloading it again", stacklevel=3)
        path.unlink()
        _download(name, cache / (name + ".gz"), mirrors, progress)
        path = cache / (name + ".gz")
        data = _open_idx(path, limit=MNIST_MAX_CONTENT)
    return _parse_idx(data, path)


def load_mnist(path: str | os.PathLike | None = None, download: bool = True, *, flatten: bool = True,
               cache_dir: str | os.PathLike | None = None, mirrors: Any = MNIST_MIRRORS,
               progress: bool = True) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load MNIST as NumPy arrays.

    Looks in ``path``, then ``$XPMLP_DATA/mnist``, then the cache directory, for the four IDX
    files (``train-images-idx3-ubyte[.gz]`` and so on) or for ``mnist_train.csv`` and
    ``mnist_test.csv`` (``label,pixel0..pixel783``, with or without a header). If none has them
    and ``download`` is true, downloads the four archives into the cache, verifying checksums.
    Files read from the cache are verified against their SHA-256 every time: a damaged one is
    downloaded again (with a warning), or refused naming it when ``download`` is false.
    Downloads are bounded: ``DOWNLOAD_DEADLINE`` seconds and ``DOWNLOAD_MAX_BYTES`` per file,
    ``DOWNLOAD_READ_TIMEOUT`` seconds per read (module constants).

    Parameters
    ----------
    path : str or path-like, optional
        A folder to look in first.
    download : bool, default=True
        Download the files into the cache when no folder has them.
    flatten : bool, default=True
        Images as (n, 784) rows; False gives (n, 28, 28).
    cache_dir : str or path-like, optional
        Default :func:`mnist_cache_dir`.
    mirrors : sequence of str, default=MNIST_MIRRORS
        Base URLs tried in order.
    progress : bool, default=True
        Show a tqdm progress bar while downloading.

    Returns
    -------
    train : tuple of (X_train, y_train)
        uint8 images of shape (60000, 784) (or (60000, 28, 28)) and int64 labels 0..9 of shape (60000,).
    test : tuple of (X_test, y_test)
        uint8 images of shape (10000, 784) (or (10000, 28, 28)) and int64 labels of shape (10000,).

    Raises
    ------
    DataError
        If MNIST is not found and ``download`` is false or the download fails (the message says
        where to put the files), or a file is malformed or fails its checksum.

    Examples
    --------
    >>> from xpmlp.datasets import load_mnist
    >>> (X_train, y_train), (X_test, y_test) = load_mnist()  # doctest: +SKIP
    >>> X_train.shape, X_train.dtype, y_test.shape  # doctest: +SKIP
    ((60000, 784), dtype('uint8'), (10000,))
    """
    cache = Path(cache_dir) if cache_dir is not None else mnist_cache_dir()
    places = ([Path(path)] if path is not None else [])
    if os.environ.get("XPMLP_DATA"):
        places.append(Path(os.environ["XPMLP_DATA"]) / "mnist")
    places.append(cache)
    found = next((f for f in map(_mnist_in, places) if f is not None), None)
    if found is None:
        if not download:
            raise DataError(_where_to_put_mnist(places))
        cache.mkdir(parents=True, exist_ok=True)
        try:
            for name in MNIST_FILES:
                if _find_idx(cache, name) is None:
                    _download(name, cache / (name + ".gz"), mirrors, progress)
        except DataError as e:
            raise DataError(f"{e}\n{_where_to_put_mnist(places)}") from None
        found = _mnist_in(cache)

    kind, files = found
    if kind == "csv":
        (Xtr, ytr), (Xte, yte) = _read_mnist_csv(files[0]), _read_mnist_csv(files[1])
    else:
        if all(p.parent.resolve() == cache.resolve() for p in files.values()):
            arrays = {name: _read_cached(cache, name, download, mirrors, progress) for name in MNIST_FILES}
        else:
            arrays = {name: read_idx(p) for name, p in files.items()}
        Xtr, ytr = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
        Xte, yte = arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]
        for images, labels, name in ((Xtr, ytr, "train"), (Xte, yte, "t10k")):
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(f"MNIST {name} files disagree: images {images.shape}, labels {labels.shape}")
        ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
    if flatten:
        Xtr, Xte = Xtr.reshape(len(Xtr), -1), Xte.reshape(len(Xte), -1)
    else:
        Xtr, Xte = Xtr.reshape(-1, 28, 28), Xte.reshape(-1, 28, 28)
    return (Xtr, ytr), (Xte, yte)


def _where_to_put_mnist(places) -> str:
    listed = "\n  ".join(str(p) for p in places)
    return ("MNIST was not found. Put the four files train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
            "(or mnist_train.csv and mnist_test.csv) in one of:\n  " + listed +
            "\nor set XPMLP_DATA to a folder with an mnist/ subfolder.")


# -- UCI heart disease ------------------------------------------------------------------------
#: The 14 columns of the UCI Cleveland heart-disease file, in order; the last, ``num``, is the target.
HEART_COLUMNS = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach",
                 "exang", "oldpeak", "slope", "ca", "thal", "num"]


def load_heart_disease(path: str | os.PathLike | None = None, *, missing: str = "drop", target: str = "binary",
                       as_frame: bool = False) -> Any:
    """Load the UCI Cleveland heart-disease file (``processed.cleveland.data``).

    The file has 303 rows of 14 comma-separated columns (``HEART_COLUMNS``), no header, and
    ``?`` for 6 missing values (in ``ca`` and ``thal``).

    Parameters
    ----------
    path : str or path-like, optional
        The file; default ``$XPMLP_DATA/uci-heart/processed.cleveland.data``.
    missing : {"drop", "median"}, default="drop"
        Missing-value policy: drop the 6 incomplete rows (297 remain), or fill each missing
        value with its column's median.
    target : {"binary", "num"}, default="binary"
        ``disease`` = 1 when ``num`` > 0 (disease present), or the 0..4 severity ``num``.
    as_frame : bool, default=False
        Return the pandas DataFrame (the 14 columns plus ``disease``) instead of X, y.

    Returns
    -------
    frame : pandas.DataFrame of shape (n_samples, 15)
        With ``as_frame``.
    X, y : tuple of ndarray
        Otherwise: X of shape (n_samples, 13), float64, and y of shape (n_samples,), int64.

    Raises
    ------
    DataError
        If no path is given and ``$XPMLP_DATA`` is not set, or the file is missing or malformed.
    ValueError
        If ``missing`` or ``target`` is not one of the values above.

    Examples
    --------
    >>> from xpmlp.datasets import load_heart_disease
    >>> X, y = load_heart_disease()  # doctest: +SKIP
    >>> X.shape, y.shape  # doctest: +SKIP
    ((297, 13), (297,))
    """
    if path is None:
        if not os.environ.get("XPMLP_DATA"):
            raise DataError("no path given and XPMLP_DATA is not set; pass the path of processed.cleveland.data")
        path = Path(os.environ["XPMLP_DATA"]) / "uci-heart" / "processed.cleveland.data"
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (the UCI Cleveland file processed.cleveland.data)")
    if missing not in ("drop", "median") or target not in ("binary", "num"):
        raise ValueError(f"missing must be 'drop' or 'median' and target 'binary' or 'num'; got {missing!r}, {target!r}")
    frame = _read_csv_frame(path, header=None, na_values="?")
    if frame.shape[1] != len(HEART_COLUMNS):
        raise DataError(f"{path}: expected {len(HEART_COLUMNS)} columns ({', '.join(HEART_COLUMNS)}; the last, "
                        f"'num', is the target), found {frame.shape[1]}")
    frame.columns = HEART_COLUMNS
    _check_numeric(frame, path, hint=" (the file has no header row: 14 numbers or '?' per line)")
    frame = frame.astype(float)
    if frame["num"].isna().any():
        raise DataError(f"{path}: row {int(frame['num'].isna().to_numpy().argmax()) + 1} has no target (num)")
    frame = frame.dropna() if missing == "drop" else frame.fillna(frame.median())
    frame = frame.reset_index(drop=True)
    frame["num"] = frame["num"].astype(np.int64)
    frame["disease"] = (frame["num"] > 0).astype(np.int64)
    if as_frame:
        return frame
    X = frame[HEART_COLUMNS[:-1]].to_numpy(dtype=np.float64)
    return X, frame["disease" if target == "binary" else "num"].to_numpy()


# -- toy problems -----------------------------------------------------------------------------
def make_xor(n: int = 4000, noise: float = 0.1, bias_column: bool = False,
             seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """XOR: points near the corners of the unit square, label = x1 XOR x2.

    Parameters
    ----------
    n : int, default=4000
        The number of points.
    noise : float, default=0.1
        The standard deviation of the Gaussian noise added to each corner.
    bias_column : bool, default=False
        Add a leading column of ones (as in many tutorials; xpmlp's layers have their own biases).
    seed : int or None, default=0
        Seeds NumPy's generator.

    Returns
    -------
    X : ndarray of shape (n, 2), or (n, 3) with ``bias_column``
        The points, float64.
    y : ndarray of shape (n,)
        The labels 0 and 1, int64.

    Examples
    --------
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(100, seed=0)
    >>> X.shape, y.shape, y[:6].tolist()
    ((100, 2), (100,), [0, 1, 0, 0, 1, 0])
    """
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 2, size=(n, 2))
    X = corners + rng.normal(0.0, noise, size=(n, 2))
    if bias_column:
        X = np.column_stack([np.ones(n), X])
    return X, (corners[:, 0] ^ corners[:, 1]).astype(np.int64)


def make_sine(n: int = 1000, low: float = 0.0, high: float = 4 * np.pi, fn: Callable | None = None,
              noise: float = 0.0, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 1-D regression problem: x uniform on [low, high], y = fn(x) (default ``|sin x|``) + noise.

    Parameters
    ----------
    n : int, default=1000
        The number of points.
    low, high : float, default=0 and 4 pi
        The interval x is drawn from.
    fn : callable, optional
        Maps the (n, 1) array of x to the (n, 1) targets; default ``np.abs(np.sin(x))``.
    noise : float, default=0.0
        The standard deviation of the Gaussian noise added to y.
    seed : int or None, default=0
        Seeds NumPy's generator.

    Returns
    -------
    X : ndarray of shape (n, 1)
        The inputs, float64.
    y : ndarray of shape (n, 1)
        The targets, float64.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp.datasets import make_sine
    >>> X, y = make_sine(50, seed=0)
    >>> X.shape, y.shape, bool(np.allclose(y, np.abs(np.sin(X))))
    ((50, 1), (50, 1), True)
    """
    rng = np.random.default_rng(seed)
    X = rng.uniform(low, high, size=(n, 1))
    y = (np.abs(np.sin(X)) if fn is None else fn(X)) + rng.normal(0.0, noise, size=(n, 1)) * (noise > 0)
    return X, y


def make_spirals(n: int = 1000, n_classes: int = 2, noise: float = 0.2, turns: float = 1.5,
                 seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved 2-D spirals, one arm per class: not linearly separable.

    Parameters
    ----------
    n : int, default=1000
        The number of points.
    n_classes : int, default=2
        The number of arms (classes).
    noise : float, default=0.2
        The noise level (the Gaussian noise's standard deviation is a tenth of it).
    turns : float, default=1.5
        How many times each arm winds around the centre.
    seed : int or None, default=0
        Seeds NumPy's generator.

    Returns
    -------
    X : ndarray of shape (n, 2)
        The points, float64.
    y : ndarray of shape (n,)
        The classes 0..n_classes-1, int64, of (almost) equal size.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp.datasets import make_spirals
    >>> X, y = make_spirals(300, n_classes=3, seed=0)
    >>> X.shape, np.bincount(y).tolist()
    ((300, 2), [100, 100, 100])
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    r = rng.uniform(0.05, 1.0, size=n)
    theta = r * turns * 2 * np.pi + y * (2 * np.pi / n_classes)
    X = np.column_stack([r * np.cos(theta), r * np.sin(theta)]) + rng.normal(0.0, noise * 0.1, size=(n, 2))
    return X, y.astype(np.int64)


def _class_index(y: np.ndarray):
    """Each row's class number when ``y`` looks like class labels, else None.

    Class-like means at most ``n // 2`` distinct values (rows of ``y`` when it is 2-D, such as
    one-hot labels), whatever the dtype: on average every class then has two rows, enough to
    appear on both sides of a split. A continuous target has (almost) as many distinct values as
    rows; stratifying it would make every row a class of its own, which is no stratification at
    all, so it gets a plain random split.
    """
    n = len(y)
    if n == 0:
        return None
    if y.ndim > 1:
        _, inverse = np.unique(y.reshape(n, -1), axis=0, return_inverse=True)
    else:
        _, inverse = np.unique(y, return_inverse=True)
    inverse = inverse.reshape(-1)
    return inverse if int(inverse.max()) + 1 <= n // 2 else None


def _test_counts(counts: np.ndarray, n_test: int, rng) -> np.ndarray:
    """Largest-remainder shares: how many rows of each class go to the test part.

    Class c's exact share is ``n_test * counts[c] / n``; each class gets its share rounded down,
    and the rows still missing from ``n_test`` go one each to the classes with the largest
    remainders (ties in random order, so no class is favoured by its position). The shares thus
    add up to exactly ``n_test`` and each is within one row of the exact share. Integer
    arithmetic keeps the remainders, and so the ties, exact.
    """
    n = int(counts.sum())
    take, remainder = np.divmod(counts.astype(np.int64) * n_test, n)
    short = n_test - int(take.sum())
    order = np.lexsort((rng.random(len(counts)), -remainder))
    take[order[:short]] += 1
    return take


def train_test_split(X: Any, y: Any, test_size: float = 0.2, *, stratify: bool = True,
                     seed: int | None = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle and split (X, y) into train and test parts, keeping class proportions by default.

    The test part has ``n_test = round(test_size * n)`` rows (halves rounded up).

    Parameters
    ----------
    X : array-like of shape (n_samples, ...)
        The inputs.
    y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        The targets.
    test_size : float, default=0.2
        The test part's share of the rows, in (0, 1).
    stratify : bool, default True
        Keep each class's proportion in both parts when ``y`` is class-like: at most ``n // 2``
        distinct values (or rows, for 2-D ``y``). Each class then sends its largest-remainder
        share of ``n_test`` to the test part: its exact share ``n_test * count / n`` rounded
        down or up, the totals adding up to ``n_test``. A continuous target (more distinct
        values) gets a plain random split, as with ``stratify=False``.
    seed : int or None, default=0
        Seeds NumPy's generator.

    Returns
    -------
    X_train : ndarray of shape (n_samples - n_test, ...)
        The training inputs, rows in random order.
    X_test : ndarray of shape (n_test, ...)
        The test inputs, rows in random order.
    y_train : ndarray of shape (n_samples - n_test,) or (n_samples - n_test, n_outputs)
        The training targets.
    y_test : ndarray of shape (n_test,) or (n_test, n_outputs)
        The test targets.

    Raises
    ------
    ValueError
        If ``test_size`` is not in (0, 1), or X and y differ in length.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp.datasets import make_spirals, train_test_split
    >>> X, y = make_spirals(300, n_classes=3, seed=0)
    >>> X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, seed=0)
    >>> X_train.shape, X_test.shape, np.bincount(y_test).tolist()
    ((240, 2), (60, 2), [20, 20, 20])
    """
    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size!r}")
    X, y = np.asarray(X), np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"X and y have different lengths: {len(X)} and {len(y)}")
    n = len(X)
    n_test = int(np.floor(float(test_size) * n + 0.5))
    rng = np.random.default_rng(seed)
    classes = _class_index(y) if stratify else None
    if classes is not None:
        take = _test_counts(np.bincount(classes), n_test, rng)
        test = np.concatenate([rng.permutation(np.flatnonzero(classes == c))[:k] for c, k in enumerate(take)])
    else:
        test = rng.permutation(n)[:n_test]
    mask = np.zeros(n, dtype=bool)
    mask[test] = True
    train_idx, test_idx = rng.permutation(np.flatnonzero(~mask)), rng.permutation(np.flatnonzero(mask))
    return X[train_idx], X[test_idx], y[train_idx], y[test_idx]
