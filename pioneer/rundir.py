"""A run directory: a local folder, or an s3:// prefix worked on through a local copy.

Rank 0 writes metrics, grids, TensorBoard files and staged checkpoints into `local`. For a
local run that is the run dir itself. For an s3:// run it is a working copy in the cache:
`push` copies written files up (checkpoints go up through the session), and `start` brings
down what an earlier session wrote, since a resumed run may land on a machine that has
never seen it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pioneer import storage

# Files an earlier session left that a resumed run appends to.
RESUMED_FILES = ("metrics.jsonl", "tensorboard")


@dataclass(frozen=True)
class RunDir:
    uri: str  # where the run lives: an absolute local path or s3://bucket/prefix/name
    local: Path  # where rank 0 writes first

    @classmethod
    def at(cls, location: str | Path) -> RunDir:
        location = str(location)
        if storage.is_remote(location):
            storage.filesystem(location)  # refuse unsupported schemes here
            return cls(location.rstrip("/"), storage.cache_path(location, "runs"))
        path = Path(location).resolve()
        return cls(str(path), path)

    @property
    def remote(self) -> bool:
        return storage.is_remote(self.uri)

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> str:
        return storage.parent(self.uri)

    def start(self) -> None:
        """Make `local` ready; for s3://, a fresh working copy of the files a run resumes."""
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)
            self.local.mkdir(parents=True)
            for name in RESUMED_FILES:
                source = storage.join(self.uri, name)
                if storage.exists(source):
                    storage.copy_tree(source, self.local / name)
        self.local.mkdir(parents=True, exist_ok=True)

    def push(self, *names: str) -> None:
        """Copy local files or folders (relative names) up to an s3:// run dir."""
        if not self.remote:
            return
        for name in names:
            if (self.local / name).exists():
                storage.copy_tree(self.local / name, storage.join(self.uri, name))

    def check_writable(self) -> None:
        """Fail now, with the reason, if the run dir cannot be written (bucket, credentials)."""
        probe = storage.join(self.uri, ".pioneer-write-check")
        try:
            storage.write_bytes(probe, b"")
            storage.delete(probe)
        except OSError as error:
            raise storage.StorageError(f"cannot write the run dir {self.uri}: {error}") from None
