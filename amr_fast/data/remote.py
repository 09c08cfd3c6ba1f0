"""Where a dataset lives: a local directory, a web server, or any command that prints a file (WebDataset URLs).

`--data` / `data=` takes what WebDataset users pass, for `index.json` and for the shards alike:
    /data/fm32  or  file:///data/fm32                   a local directory
    http://host/fm32  https://host/fm32                  a directory URL ("/NAME" is appended)
    pipe:aws s3 cp s3://bucket/fm32/{} -                 a command; `{}` stands for each file's name
    pipe:gsutil cat gs://bucket/fm32/{}   pipe:cat /mnt/fm32/{}
    gs://bucket/fm32, ais://..., hf://...                the other schemes of webdataset's `gopen`

Files are opened with WebDataset's own opener (`webdataset.gopen.gopen`: http(s) through `curl`, `pipe:` through
the shell; GOPEN_REWRITE / USE_AIS_FOR apply) and read whole into memory, where our tar parser takes over. A read
that fails (cannot open, connection reset, a command that exits non-zero) is tried again up to `RETRIES` times,
`RETRY_DELAY` seconds apart (doubling); after that the caller gets the longest prefix that arrived and the error,
parses what it can and counts the rest as skipped, naming the URL in its warning.

Remote shards are streamed, never stored, except in one case: when a split has fewer shards than readers, each
shard is cut into parts read by different readers, and instead of downloading it once per part the readers of a
machine share one copy in `$AMR_FAST_CACHE/shards/` (default ~/.cache/amr_fast), downloaded once under a lock.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.request import url2pathname

from amr_fast.progress import bar as progress_bar

RETRIES = 3  # tries after the first one
RETRY_DELAY = 1.0  # seconds before the first retry, doubled each time
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CHUNK = 1 << 20


def local_path(root: str | Path) -> Path | None:
    """The local path of `root` (a path or a file:// URL), or None if it is remote."""
    text = str(root)
    if text.startswith("file:"):
        return Path(url2pathname(re.sub(r"^file:(//)?", "", text)))
    if text.startswith("pipe:") or _SCHEME.match(text):
        return None
    return Path(text).expanduser()


def join(root: str, name: str) -> str:
    """The URL of file `name` in the remote dataset `root` (a directory URL, or a pipe: command with `{}`)."""
    if root.startswith("pipe:"):
        if "{}" not in root:
            raise ValueError(
                f"data={root!r}: a pipe: dataset needs {{}} where each file's name goes, e.g. "
                "'pipe:aws s3 cp s3://bucket/fm32/{} -' or 'pipe:cat /mnt/fm32/{}'"
            )
        return root.replace("{}", name)
    return root.rstrip("/") + "/" + name


def _read_once(url: str, desc: str | None = None) -> tuple[bytes, Exception | None]:
    from webdataset.gopen import gopen

    chunks: list[bytes] = []
    bar = progress_bar(desc=desc, unit="B", unit_scale=True, unit_divisor=1024, show=desc is not None)
    try:
        stream = gopen(url, "rb")
        try:
            while chunk := stream.read(_CHUNK):
                chunks.append(chunk)
                bar.update(len(chunk))
        finally:
            stream.close()  # a pipe: waits for the command and raises if it failed
    except (OSError, ValueError) as err:  # connection reset, non-zero exit, no curl, ...
        return b"".join(chunks), err
    finally:
        bar.close()
    return b"".join(chunks), None


def fetch(url: str, retries: int | None = None, desc: str | None = None) -> tuple[bytes, str | None]:
    """All bytes of `url`: (data, None), or after `retries` failed retries (longest prefix received, the error).
    desc: show the download on a progress bar under this name."""
    retries = RETRIES if retries is None else retries
    best, error = b"", None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(RETRY_DELAY * 2 ** (attempt - 1))
        data, err = _read_once(url, desc)
        if err is None:
            return data, None
        if len(data) > len(best):
            best = data
        error = str(err)
        if isinstance(err, FileNotFoundError) and "curl" in error:
            error = "curl not found: webdataset reads http(s) URLs with curl; install it"
    return best, f"{error} (tried {retries + 1} times)"


def fetch_shared(url: str, name: str, digest: str) -> tuple[bytes, str | None]:
    """`fetch`, through one local copy per machine shared by every reader (see the module docstring)."""
    folder = Path(os.environ.get("AMR_FAST_CACHE", "~/.cache/amr_fast")).expanduser() / "shards" / digest[:16]
    path = folder / name
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with file_lock(folder / (name + ".lock")):  # one download per machine; the other readers wait for it
            if not path.is_file():
                data, error = fetch(url, desc=f"downloading {name}")
                if error is not None:
                    return data, error  # a damaged copy is never kept
                tmp = folder / (name + f".{os.getpid()}.partial")
                tmp.write_bytes(data)
                os.replace(tmp, path)
                return data, None
    return path.read_bytes(), None


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the duration of the block."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (at worst a shard is downloaded twice)
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
