"""Local paths and s3:// URIs behind one small interface (pyarrow filesystems).

S3 endpoint, region and credentials come from the standard AWS environment variables
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, ...),
which pyarrow's S3 client reads itself, so MinIO or Ceph users only set those.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs

CACHE_ENV = "PIONEER_CACHE"  # where local copies of remote checkpoints and runs are kept


class StorageError(OSError):
    """A path or URI that cannot be read or written."""


def is_remote(uri: str) -> bool:
    return "://" in str(uri)


def filesystem(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// URI."""
    uri = str(uri)
    if not is_remote(uri):
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    if not uri.startswith("s3://"):
        raise StorageError(f"unsupported URI {uri!r}: use a local path or s3://bucket/prefix")
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError for bad URIs
        raise StorageError(f"cannot open {uri!r}: {error}") from None
    return fs, path.rstrip("/")


def join(uri: str | Path, *parts: str) -> str:
    uri = str(uri)
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return str(Path(uri, *parts))


def parent(uri: str | Path) -> str:
    uri = str(uri)
    return uri.rstrip("/").rsplit("/", 1)[0] if is_remote(uri) else str(Path(uri).parent)


def exists(uri: str | Path) -> bool:
    fs, path = filesystem(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as error:
        raise StorageError(f"cannot reach {uri}: {error}") from None


def is_dir(uri: str | Path) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def list_files(uri: str | Path) -> list[tuple[str, int]]:
    """(path relative to uri, size in bytes) of every file below uri, sorted by path."""
    fs, root = filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as error:
        raise StorageError(f"cannot list {uri}: {error}") from None
    files = [
        (
            posixpath.relpath(info.path, root)
            if is_remote(str(uri))
            else os.path.relpath(info.path, root),
            info.size,
        )
        for info in infos
        if info.type == pafs.FileType.File
    ]
    return sorted(files)


def read_bytes(uri: str | Path) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Write a whole file so that no reader ever sees part of it.

    Local: a temp file in the same folder, then an atomic rename. S3: one PUT (or a
    multipart upload), which S3 only makes visible once it is complete.
    """
    fs, path = filesystem(uri)
    if is_remote(str(uri)):
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write a local file atomically: write(handle) into <name>.tmp-<random> beside it,
    fsync, then rename over the target. A killed writer leaves only the temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(staging, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return path


def delete(uri: str | Path) -> None:
    fs, path = filesystem(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def delete_tree(uri: str | Path) -> None:
    """Remove a folder (an S3 prefix) and everything below it; nothing there is fine."""
    fs, path = filesystem(uri)
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            raise StorageError(f"cannot delete {uri}: {error}") from None


def list_dirs(uri: str | Path) -> list[str]:
    """Names of the folders directly below uri (empty if uri does not exist)."""
    fs, root = filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError as error:
        raise StorageError(f"cannot list {uri}: {error}") from None
    return sorted(
        posixpath.basename(info.path) for info in infos if info.type == pafs.FileType.Directory
    )


def copy_tree(source: str | Path, destination: str | Path) -> None:
    """Copy a file or a folder (recursively) between local paths and s3:// URIs."""
    source_fs, source_path = filesystem(source)
    destination_fs, destination_path = filesystem(destination)
    try:
        if source_fs.get_file_info(source_path).type == pafs.FileType.File:
            pairs = [(source_path, destination_path)]
        else:
            pairs = [
                (f"{source_path}/{name}", f"{destination_path}/{name}")
                for name, _ in list_files(source)
            ]
        for source_file, destination_file in pairs:
            if not is_remote(str(destination)):  # pyarrow does not make local parent folders
                Path(destination_file).parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(source_file, destination_file, source_fs, destination_fs)
    except OSError as error:
        raise StorageError(f"cannot copy {source} to {destination}: {error}") from None


def cache_dir(*parts: str) -> Path:
    """A folder under $PIONEER_CACHE (default ~/.cache/pioneer) for local copies of remote files."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pioneer"
    return Path(root, *parts)


def cache_path(uri: str, kind: str) -> Path:
    """Where the local copy of a remote folder lives: <cache>/<kind>/<bucket>/<key>."""
    return cache_dir(kind, *uri.split("://", 1)[1].strip("/").split("/"))
