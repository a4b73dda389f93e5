"""Bucket and other fsspec URLs as logdirs (``s3://``, ``gs://``, ``memory://``...).

Object stores cannot append to an object. `ObjectSink` therefore keeps the
bytes of the current event file in memory and uploads the whole object each
time `EventWriter` appends to it; `EventWriter` rolls over to a new object
(a new event file name that sorts after the previous one) every `roll_secs`,
so a run in a bucket is a sequence of event files that TensorBoard and the
CLI read as one run. Every upload is all-or-nothing: a failed upload leaves
the sink as it was, so a retry neither loses nor duplicates records.

Cloud clients are optional extras: ``pip install 'training-health[s3]'``
(s3fs + boto3) or ``'training-health[gcs]'`` (gcsfs). Credentials come from
the clients' usual places (``AWS_*`` variables, ``~/.aws``, Google
application-default credentials, fsspec's config file). A custom S3 endpoint
is taken from ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` or, as in
TensorBoard, from ``S3_ENDPOINT``.

Every error of a remote client reaches the caller as an `OSError` (the
client's own exception is chained as ``__cause__``), which is what
`EventWriter` expects from a sink.

Only the standard library is imported at module level.
"""

import asyncio
import logging
import os
import posixpath
import sys

# URL scheme -> extra of training-health that installs its client.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}

# Schemes whose "directories" are key prefixes: no mkdir before writing.
OBJECT_STORES = frozenset(["s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "memory"])

# Bounded client timeouts for S3, so that an unreachable or stalled endpoint
# fails an upload in seconds (the writer then keeps the data and retries).
S3_CONFIG = {"connect_timeout": 5, "read_timeout": 20, "retries": {"max_attempts": 2}}

# An object larger than this is closed and the next append starts a new one
# (each append re-uploads the whole object). 16 MiB is many minutes of data.
MAX_OBJECT_BYTES = 16 * 1024 * 1024

# Hard limit on one upload of an async client (s3fs, gcsfs): client read
# timeouts do not cover every stall (an S3 PUT waiting for its answer).
UPLOAD_TIMEOUT = 60.0

EVENT_FILE_MARK = "tfevents"

log = logging.getLogger("training_health")

# aiohttp sends a request's body in a task of its own. When the server closes
# the connection before the body is sent (a bucket going away mid-upload), the
# request fails, and that failure reaches the caller (the writer reports it
# once); the task's ConnectionResetError, though, is never retrieved, and
# asyncio would print it with a traceback on stderr, once per failed upload.
_BODY_TASK = "ClientRequest.write_bytes"

# Exception classes of remote clients, looked up only in modules that the
# client in use has already imported (so nothing heavy is imported here).
_CLIENT_ERRORS = (
    ("botocore.exceptions", ("BotoCoreError", "ClientError")),
    ("aiohttp", ("ClientError",)),
    ("fsspec.exceptions", ("FSTimeoutError",)),
    ("gcsfs.retry", ("HttpError",)),
    ("google.auth.exceptions", ("GoogleAuthError",)),
    ("requests", ("RequestException",)),
)


class MissingDependencyError(ImportError):
    """The client library for a URL scheme is not installed."""


class RemoteError(OSError):
    """A remote store operation failed; the client's exception is `__cause__`."""


def is_url(path):
    """True for a URL with a scheme other than ``file://`` (which is local)."""
    path = str(path)
    return "://" in path and not path.startswith("file://")


def local_path(path):
    """A local path for `path`, stripping a ``file://`` prefix."""
    path = str(path)
    return path[len("file://"):] if path.startswith("file://") else path


def scheme_of(url):
    """The scheme of `url` in lower case ("s3" for "s3://bucket/run")."""
    return str(url).split("://", 1)[0].lower()


def join(base, *parts):
    """Joins path parts with "/" for URLs and `os.path.join` for local paths."""
    if is_url(base):
        return posixpath.join(str(base).rstrip("/") + "/", *parts)
    return os.path.join(local_path(base), *parts)


def _install_hint(scheme):
    extra = EXTRAS.get(scheme)
    if extra:
        return "install it with: pip install 'training-health[%s]'" % extra
    return (
        "install fsspec and the fsspec implementation for '%s://' "
        "(pip install fsspec <package for %s>)" % (scheme, scheme)
    )


def _default_options(scheme):
    if scheme not in ("s3", "s3a"):
        return {}
    options = {"config_kwargs": dict(S3_CONFIG)}
    endpoint = os.environ.get("S3_ENDPOINT")
    has_aws_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and not has_aws_endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


def _merge(defaults, overrides):
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in defaults.items()}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


def check_available(url):
    """Imports the client for `url`'s scheme, without any network access.

    Raises:
        MissingDependencyError: the client (or fsspec) is not installed; the
            message names the extra to install.
        ValueError: the scheme is unknown to fsspec.
    """
    scheme = scheme_of(url)
    try:
        import fsspec
    except ImportError as e:
        raise MissingDependencyError(
            "logdir %r is a URL, which needs fsspec and a client for '%s://'; %s"
            % (str(url), scheme, _install_hint(scheme))
        ) from e
    try:
        return fsspec.get_filesystem_class(scheme)
    except ImportError as e:
        raise MissingDependencyError(
            "logdir %r needs the client library for '%s://' (%s); %s"
            % (str(url), scheme, e, _install_hint(scheme))
        ) from e
    except ValueError as e:
        raise ValueError(
            "logdir %r has the URL scheme '%s://', which fsspec does not know; use a "
            "local directory or a URL such as s3://bucket/run or gs://bucket/run" % (str(url), scheme)
        ) from e


def filesystem(url, storage_options=None):
    """The fsspec filesystem and in-filesystem path of `url`.

    Args:
        url: a URL such as ``s3://bucket/runs``.
        storage_options: dict of options for the fsspec filesystem (for S3:
            ``client_kwargs={"endpoint_url": ...}``, ``key``, ``secret``...).
            Merged over bounded timeouts for S3 and an ``S3_ENDPOINT`` from
            the environment. Defaults to None (no extra options).

    Returns:
        (fs, path) where `path` has no scheme ("bucket/runs").
    """
    check_available(url)
    import fsspec

    options = _merge(_default_options(scheme_of(url)), storage_options)
    fs, path = fsspec.core.url_to_fs(str(url), **options)
    _quiet_abandoned_bodies(fs)
    return fs, path


def _quiet_abandoned_bodies(fs):
    """Has the event loop of async filesystem `fs` log the never-retrieved
    ConnectionResetError of an aiohttp request's body task (see _BODY_TASK)
    at debug level; every other error goes to the loop's previous handler."""
    loop = getattr(fs, "loop", None) if getattr(fs, "async_impl", False) else None
    if loop is None or getattr(loop.get_exception_handler(), "quiets_abandoned_bodies", False):
        return
    previous = loop.get_exception_handler()

    def handler(loop, context):
        task = context.get("future")
        coro = task.get_coro() if isinstance(task, asyncio.Task) else None
        if (isinstance(context.get("exception"), ConnectionResetError)
                and getattr(coro, "__qualname__", None) == _BODY_TASK):
            log.debug("training_health: %s: %r (its request failed and was reported)",
                      context.get("message"), context["exception"])
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.quiets_abandoned_bodies = True
    loop.set_exception_handler(handler)


def client_errors():
    """The exception classes that mean "the remote store failed"."""
    found = [OSError, TimeoutError, asyncio.TimeoutError]
    for module_name, names in _CLIENT_ERRORS:
        module = sys.modules.get(module_name)
        for name in names:
            cls = getattr(module, name, None) if module is not None else None
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found.append(cls)
    return tuple(found)


def call(what, url, function, *args, **kwargs):
    """Runs `function(*args, **kwargs)`, turning client errors into `RemoteError`.

    `OSError`s of the client (FileNotFoundError, PermissionError...) pass
    through unchanged; other client exceptions become `RemoteError` with a
    message saying what failed on which URL.
    """
    try:
        return function(*args, **kwargs)
    except OSError:
        raise
    except client_errors() as e:
        raise RemoteError("%s %s failed: %s: %s" % (what, url, type(e).__name__, e)) from e


class ObjectSink:
    """One event file in a remote store, re-uploaded whole on each append.

    Args:
        fs: an fsspec filesystem.
        path: the object's path in `fs` ("bucket/run/events.out.tfevents...").
        url: the object's URL, for messages.
        max_bytes: size at which `full` becomes True so the writer rolls
            over. Defaults to MAX_OBJECT_BYTES.
        upload_timeout: seconds after which an upload through an async
            client is cancelled and counted as failed. Defaults to
            UPLOAD_TIMEOUT.
    """

    def __init__(self, fs, path, url, max_bytes=MAX_OBJECT_BYTES, upload_timeout=UPLOAD_TIMEOUT):
        if not upload_timeout > 0:
            raise ValueError("upload_timeout must be > 0 seconds; received %r" % (upload_timeout,))
        self.fs = fs
        self.path = path
        self.url = url
        self.max_bytes = int(max_bytes)
        self.upload_timeout = float(upload_timeout)
        self._data = b""
        self._parent_made = scheme_of(url) in OBJECT_STORES

    @property
    def size(self):
        """Bytes in the object (as last uploaded successfully)."""
        return len(self._data)

    @property
    def full(self):
        return len(self._data) >= self.max_bytes

    def append(self, data):
        """Uploads the object with `data` appended; all-or-nothing.

        Raises:
            OSError: the upload failed; the sink is unchanged, so the same
                data can be appended again.
        """
        if not data:
            return
        if not self._parent_made:
            parent = posixpath.dirname(self.path)
            call("mkdir", self.url, self.fs.makedirs, parent, exist_ok=True)
            self._parent_made = True
        new = self._data + bytes(data)
        call("upload to", self.url, self._upload, new)
        self._data = new

    def _upload(self, data):
        if getattr(self.fs, "async_impl", False) and hasattr(self.fs, "_pipe_file"):
            from fsspec.asyn import sync

            # cancels the upload after the timeout (raises FSTimeoutError)
            return sync(self.fs.loop, self.fs._pipe_file, self.path, data, timeout=self.upload_timeout)
        return self.fs.pipe_file(self.path, data)


def make_sink(logdir, filename, storage_options=None, upload_timeout=UPLOAD_TIMEOUT):
    """An `ObjectSink` for event file `filename` under the URL `logdir`.

    Args:
        logdir: the run's URL, e.g. ``s3://bucket/runs/run1``.
        filename: the event file's name.
        storage_options: see `filesystem`. Defaults to None.
        upload_timeout: see `ObjectSink`. Defaults to UPLOAD_TIMEOUT.
    """
    fs, root = filesystem(logdir, storage_options)
    path = posixpath.join(root.rstrip("/"), filename) if root else filename
    return ObjectSink(fs, path, join(logdir, filename), upload_timeout=upload_timeout)


def list_event_files(logdir, storage_options=None):
    """Event files under `logdir` (local path or URL), grouped by run.

    Args:
        logdir: local directory or URL.
        storage_options: see `filesystem`. Defaults to None.

    Returns:
        dict run -> sorted list of event file paths (URLs for URL logdirs),
        where run is the directory relative to `logdir` with "/" separators
        ("." for files directly in `logdir`).

    Raises:
        FileNotFoundError: `logdir` does not exist.
        OSError: the store could not be listed.
    """
    runs = {}
    if not is_url(logdir):
        root = local_path(logdir)
        if not os.path.isdir(root):
            raise FileNotFoundError("no such log directory: %r" % str(logdir))
        for dirpath, _, files in os.walk(root):
            names = sorted(f for f in files if EVENT_FILE_MARK in f)
            if names:
                rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
                runs[rel] = [os.path.join(dirpath, f) for f in names]
        return runs
    fs, root = filesystem(logdir, storage_options)
    root = root.rstrip("/")
    fs.invalidate_cache(root)  # listings are cached; a watcher needs fresh ones
    found = call("listing", logdir, fs.find, root, detail=True)
    if not found and not call("listing", logdir, fs.exists, root):
        raise FileNotFoundError("nothing found under %r" % str(logdir))
    base = str(logdir).rstrip("/")
    for path in sorted(found):
        name = posixpath.basename(path)
        if EVENT_FILE_MARK not in name:
            continue
        rel = posixpath.relpath(posixpath.dirname(path), root) if root else posixpath.dirname(path)
        url = base + "/" + posixpath.relpath(path, root) if root else base + "/" + path
        runs.setdefault(rel, []).append(url)
        size = found[path].get("size") if isinstance(found[path], dict) else None
        if isinstance(size, int):
            _listed_sizes[url] = size
    return runs


# URL -> size seen by the latest `list_event_files`, used once by `read_bytes`
# so that polling a run of many rolled-over objects costs one listing, not
# one size request per object.
_listed_sizes = {}


def read_bytes(path, start=0, storage_options=None):
    """The bytes of a file (local path or URL) from offset `start` to its end.

    For a URL just listed by `list_event_files`, the size from the listing
    is used instead of asking the store again.

    Args:
        path: local path or URL of one file.
        start: byte offset to start from. Defaults to 0.
        storage_options: see `filesystem`. Defaults to None.

    Raises:
        OSError: the file could not be read.
    """
    if start < 0:
        raise ValueError("start must be >= 0; received %r" % (start,))
    if not is_url(path):
        with open(local_path(path), "rb") as f:
            f.seek(start)
            return f.read()
    fs, inner = filesystem(path, storage_options)
    size = _listed_sizes.pop(str(path), None)  # fresh from the listing just made
    if size is None:
        fs.invalidate_cache(inner)  # the object may have been re-uploaded since
        size = call("size of", path, fs.size, inner)
    if size is None or start >= size:
        return b""
    # Up to the size known now: bytes uploaded later are read on the next call.
    return call("reading", path, fs.cat_file, inner, start=start, end=size)


def tensorboard_main(argv=None):
    """Runs TensorBoard with TensorFlow hidden from it, so it can read ``s3://``.

    With TensorFlow installed, TensorBoard reads logdirs through
    ``tf.io.gfile``, which knows ``gs://`` but not ``s3://`` (that needs
    the tensorflow-io plugin): it stops with "Unsupported filename scheme
    's3'". Without TensorFlow, TensorBoard uses its own file layer, which
    reads ``s3://`` through boto3 (endpoint from ``S3_ENDPOINT``) and other
    schemes through fsspec. This runs TensorBoard as if TensorFlow were not
    installed: ``python -m training_health.io.remote --logdir s3://bucket/runs``.

    Args:
        argv: TensorBoard's arguments. Defaults to ``sys.argv[1:]``.

    Returns:
        TensorBoard's exit status.
    """
    if "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None:
        raise RuntimeError(
            "tensorflow is already imported in this process; run "
            "`python -m training_health.io.remote --logdir URL` in a fresh process instead"
        )
    sys.modules["tensorflow"] = None  # `import tensorflow` now fails: TensorBoard uses its stub
    from tensorboard import main as tensorboard

    sys.argv = ["tensorboard"] + list(sys.argv[1:] if argv is None else argv)
    return tensorboard.run_main()


if __name__ == "__main__":
    sys.exit(tensorboard_main())
