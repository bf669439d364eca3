"""Logdirs in object stores (``s3://``, ``gs://``, any fsspec URL), read with ranged GETs.

A bucket has no directories and no inotify: one listing of the whole prefix
(``fs.find``: one LIST request per 1,000 objects, never one per run) gives
every event file and its size; each file is then read from its saved offset
with ranged GETs of up to ``BLOCK_BYTES``. TensorFlow's GCS and S3 writers
"append" by rewriting the whole object, so an object that grew keeps the
bytes already read and is read on from the offset; one whose bytes changed is
read again from the start by RecordTail's own check, as on a local disk.

fsspec and the store's package (s3fs, gcsfs) are optional: ``pip install
'gradwatch[s3]'`` or ``'gradwatch[gcs]'``. Credentials and endpoints come from
the SDKs' own chains (``AWS_*`` environment and profiles, ``AWS_ENDPOINT_URL``,
``GOOGLE_APPLICATION_CREDENTIALS``, ``STORAGE_EMULATOR_HOST``, instance and
workload identity); gradwatch never sees or logs them.
"""

from __future__ import annotations

import errno
import posixpath
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from gradwatch.events.source import NotRegularFile

# One GET reads up to this much: few requests for a file being caught up,
# memory bounded per file however large the object.
BLOCK_BYTES = 8 << 20

# Bytes the daemon's lister thread fetches ahead per listing, all objects together (and what the
# loop keeps of them meanwhile): a bound on memory, whatever a poll found written.
PREFETCH_BYTES = 4 * BLOCK_BYTES

# GETs refused with access denied that one pass of the lister passes over before it ends: a
# policy that denies every GET (the listing still works) costs this many per poll, not one per object
REFUSED_PER_PASS = 4

# (offset of its first byte, the bytes) of an object, fetched ahead of the read that needs them
Block = tuple[int, bytes]

# fsspec protocol -> the package that provides it, for the "install it" message
_EXTRAS = {"s3": "gradwatch[s3]", "s3a": "gradwatch[s3]", "gs": "gradwatch[gcs]", "gcs": "gradwatch[gcs]"}


class RemoteError(OSError):
    """A request to the object store failed (network, permission, throttling); the reason is the message."""


@dataclass
class RequestCounts:
    """Requests made to the store (what a poll costs; the daemon's metrics count them)."""

    lists: int = 0
    gets: int = 0
    bytes_fetched: int = 0
    errors: int = 0


class RemoteRefused(RemoteError):
    """The store answered access denied (HTTP 403): often that object's alone (its KMS key)."""


def _refused(e: Exception) -> bool:
    """Whether an SDK's exception is an access denied: s3fs raises PermissionError for a 403,
    gcsfs a plain OSError whose message starts "Forbidden:" (gcsfs/retry.py)."""
    return isinstance(e, PermissionError) or (type(e) is OSError and str(e).startswith("Forbidden:"))


def is_remote(logdir: str) -> bool:
    """Whether ``logdir`` is a URL of another filesystem than the local one."""
    scheme, sep, _ = logdir.partition("://")
    return bool(sep) and scheme.isidentifier() and scheme not in ("file", "local")


def endpoint_options(url: str, endpoint_url: str | None) -> dict[str, Any]:
    """fsspec storage options that send ``url``'s requests to ``endpoint_url`` (MinIO, an emulator)."""
    if endpoint_url is None:
        return {}
    scheme = url.partition("://")[0]
    if scheme in ("s3", "s3a"):
        return {"client_kwargs": {"endpoint_url": endpoint_url}}
    if scheme in ("gs", "gcs"):
        return {"endpoint_url": endpoint_url}
    raise RemoteError(f"{url}: an endpoint URL is for s3:// and gs:// logdirs")


def _install_hint(url: str, e: ImportError) -> str:
    extra = _EXTRAS.get(url.partition("://")[0])
    if extra:
        return f"pip install '{extra}'"
    return f"a package this kind of URL needs is missing ({e})"


_USERINFO = re.compile(r"://[^/@\s]*@")


def _reason(e: BaseException) -> str:
    """One line saying why a request failed. The SDKs keep keys out of their messages; a
    ``user:password@`` in an endpoint URL they quote is cut here."""
    text = str(e).strip().splitlines()
    line = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    return _USERINFO.sub("://", line)


class ObjectStat(NamedTuple):
    """What a listing says of one object, spelled like the two fields of ``os.stat`` the daemon
    compares between polls: an object whose size and version are unchanged is not read at all."""

    st_size: int
    st_mtime_ns: int  # not a time: a checksum of the object's version (ETag, generation)


# listing fields that change whenever an object is written again, in the order tried:
# s3fs's ETag, gcsfs's generation and etag, times for backends without either
_VERSION_FIELDS = ("ETag", "generation", "etag", "LastModified", "updated", "mtime", "created")


def _version(info: dict[str, Any]) -> int:
    for name in _VERSION_FIELDS:
        value = info.get(name)
        if value is not None:
            return zlib.crc32(str(value).encode())
    return 0


class RemoteLogdir:
    """One remote logdir: its filesystem, and each event file's size at the last listing."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        try:
            from fsspec.core import url_to_fs
        except ImportError as e:
            raise RemoteError(f"{url}: a remote logdir needs fsspec: {_install_hint(url, e)}") from e
        try:
            self.fs, root = url_to_fs(url, **(storage_options or {}))
        except ImportError as e:
            raise RemoteError(f"{url}: {_install_hint(url, e)}") from e
        except Exception as e:  # a bad URL or option: fsspec backends raise many types
            raise RemoteError(f"{url}: {_reason(e)}") from e
        self.url = url
        self.root = root.rstrip("/")
        self.sizes: dict[str, int] = {}
        self.listed: dict[str, ObjectStat] | None = None  # the listing in use; None before the first
        # bytes fetched ahead by another thread (fetch_blocks): reads of them make no request
        self.blocks: dict[str, Block] = {}
        self.requests = RequestCounts()

    def list_event_files(self) -> dict[str, int]:
        """{URL of each object under the prefix: its size}, from one listing (cache dropped first)."""
        self.use(self.fetch_listing())
        return self.sizes

    def fetch_listing(self, keep: Callable[[str], bool] | None = None) -> dict[str, ObjectStat]:
        """{URL of each object under the prefix (whose name ``keep`` keeps): its size and version}:
        one LIST per 1,000 objects.

        Thread-safe (the daemon lists on a thread of its own); ``use`` makes it the listing
        that readers and ``stat`` see."""
        # s3fs's and gcsfs's find() list afresh today; a backend that answers from its
        # listing cache would never show a new object or a new size
        self.fs.invalidate_cache()
        self.requests.lists += 1
        try:
            found = self.fs.find(self.root, detail=True)
            return {
                self.url_of(p): ObjectStat(int(info.get("size") or 0), _version(info))
                for p, info in found.items()
                if _is_file(info) and (keep is None or keep(posixpath.basename(p)))
            }
        except Exception as e:  # network, permission, no such bucket: one clear line, never a traceback
            self.requests.errors += 1
            raise RemoteError(f"{self.url}: cannot list: {_reason(e)}") from e

    def use(self, listing: dict[str, ObjectStat], blocks: dict[str, Block] | None = None) -> None:
        """Read and stat objects as ``listing`` says (sizes without a request per object), and
        read ``blocks`` (fetched ahead for this listing) and the blocks kept of the last one."""
        self.listed = listing
        self.sizes = {url: st.st_size for url, st in listing.items()}
        kept = {url: block for url, block in self.blocks.items() if url in listing}
        self.blocks = {**kept, **(blocks or {})}

    def fetch_blocks(
        self, listing: dict[str, ObjectStat], wanted: list[tuple[str, int, int]], budget: int = PREFETCH_BYTES
    ) -> tuple[dict[str, Block], tuple[str, RemoteError] | None, list[str]]:
        """GET (url, offset, length) of each ``wanted`` object of ``listing`` until ``budget`` bytes
        are fetched; the blocks, the object and error of the first GET that failed, and every
        object whose GET failed. Thread-safe.

        A GET refused for its object alone (access denied on that key) is passed over, up to
        REFUSED_PER_PASS of them; any other failed GET ends the pass (each holds its thread for
        the SDK's retries, and the store is likely down for all): the objects after it wait for
        the next listing."""
        blocks: dict[str, Block] = {}
        failed: tuple[str, RemoteError] | None = None
        failed_urls: list[str] = []
        refused = 0
        spent = 0
        for url, offset, length in wanted:
            if spent >= budget:
                break
            obj = RemoteObject(self.fs, self._path(url), url, listing[url].st_size, self.requests)
            try:
                obj._fetch(offset, length)
            except FileNotFoundError:
                continue  # deleted since the listing: the next one says so
            except RemoteError as e:
                failed = failed or (url, e)
                failed_urls.append(url)
                refused += 1
                if isinstance(e, RemoteRefused) and refused < REFUSED_PER_PASS:
                    continue  # likely this object's (its KMS key), not all's
                break
            blocks[url] = (obj._block_at, obj._block)
            spent += len(obj._block)
        return blocks, failed, failed_urls

    def keep_blocks(self, urls: set[str]) -> None:
        """Drop the blocks fetched ahead but those of ``urls`` (objects read on at the next turn)."""
        self.blocks = {url: block for url, block in self.blocks.items() if url in urls}

    def short(self, url: str) -> bool:
        """The object holds more than the bytes fetched ahead of it: the rest comes with a later block."""
        block = self.blocks.get(url)
        return block is not None and block[0] + len(block[1]) < self.sizes.get(url, 0)

    def stat(self, url: str) -> ObjectStat:
        """The object's size and version at the listing in use; FileNotFoundError when it was not
        listed (deleted: the daemon counts it vanished as it would a local file)."""
        st = (self.listed or {}).get(url)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "not in the latest listing", url)
        return st

    def url_of(self, path: str) -> str:
        """The URL of a listed object, spelled from the logdir URL the user gave."""
        return self.url.rstrip("/") + path[len(self.root) :]

    def relative(self, url: str) -> str:
        return url[len(self.url.rstrip("/")) :].lstrip("/")

    def _path(self, url: str) -> str:
        return self.root + "/" + self.relative(url)

    def open(self, url: str) -> RemoteObject:
        return RemoteObject(
            self.fs, self._path(url), url, self.sizes.get(url), self.requests, self.blocks.get(url)
        )


def _is_file(info: dict[str, Any]) -> bool:
    return info.get("type", "file") == "file"


def run_and_name(relative: str) -> tuple[str, str]:
    """("run", "file name") of an object's path below the logdir; the run is "." at the top."""
    run, name = posixpath.split(relative)
    return run or ".", name


class RemoteObject:
    """One object read through ranged GETs (RecordTail's ByteSource).

    Its size is the listing's (no HEAD request per file per poll); when the
    object was replaced by a shorter one since, a GET returns less and that
    is its size now. Reads are served from one block of up to BLOCK_BYTES, so
    the 4 bytes RecordTail checks before its offset and the new bytes after it
    come in one GET.
    """

    def __init__(
        self,
        fs: Any,
        path: str,
        url: str,
        size: int | None,
        requests: RequestCounts | None = None,
        block: Block | None = None,
    ) -> None:
        self.fs = fs
        self.path = path
        self.url = url
        self.requests = requests or RequestCounts()
        self._size = size if size is not None else self._info_size()
        self._pos = 0
        self._block = b""
        self._block_at = 0
        # read from bytes fetched ahead only: never a GET of its own (the daemon's loop reads it)
        self._ahead = block is not None
        if block is not None:
            # bytes fetched ahead: the object ends where they end for this read (no GET for the
            # rest, which comes with a later block)
            self._block_at, self._block = block
            self._size = min(self._size, self._block_at + len(self._block))

    def _info_size(self) -> int:
        info = self._call(self.fs.info, self.path)
        if not _is_file(info):
            raise NotRegularFile(errno.EISDIR, "not an object", self.url)
        return int(info.get("size") or 0)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise  # the object is gone: the reader counts a vanished file
        except Exception as e:  # fsspec backends raise their SDK's types: one OSError with the reason
            self.requests.errors += 1
            raise (RemoteRefused if _refused(e) else RemoteError)(_reason(e)) from e

    def __enter__(self) -> RemoteObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self._block = b""

    def size(self) -> int:
        return self._size

    def seek(self, offset: int) -> None:
        self._pos = offset

    def read(self, size: int) -> bytes:
        data = self.pread(size, self._pos)
        self._pos += len(data)
        return data

    def pread(self, size: int, offset: int) -> bytes:
        end = min(offset + size, self._size)
        if end <= offset:
            return b""
        if not self._block_at <= offset or end > self._block_at + len(self._block):
            if self._ahead:
                # before the bytes fetched ahead (RecordTail found them rewritten and starts
                # again at 0): no more data now; a later block brings them (Bucket.after_read)
                return b""
            self._fetch(offset, max(size, BLOCK_BYTES))
        at = offset - self._block_at
        return self._block[at : at + end - offset]

    def _fetch(self, offset: int, size: int) -> None:
        end = min(offset + size, self._size)
        self.requests.gets += 1
        data = self._call(self.fs.cat_file, self.path, start=offset, end=end)
        self.requests.bytes_fetched += len(data)
        if len(data) < end - offset:  # replaced by a shorter object since the listing
            self._size = offset + len(data)
        self._block, self._block_at = data, offset

    def next_data(self, offset: int) -> int | None:
        return offset if offset < self._size else None

    def hole_start(self, offset: int) -> int | None:
        return None
