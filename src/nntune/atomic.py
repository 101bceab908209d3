"""Atomic file writes: every file nntune writes goes to a temporary file in the same directory, is fsync'd and then
renamed over its target, so a reader (or a resumed run after a crash) sees the previous version or the new one,
never half a file. Failing to write (a read-only or full directory) is an :class:`ArtifactError` naming the file.

Written here rather than taken from a library because the guarantee is three system calls (write + fsync, rename,
fsync of the directory) and every writer in nntune, including safetensors' ``save_file``, must share it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from nntune.errors import ArtifactError


def _file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (0644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()  # writers that create files 0600 (safetensors) get the ordinary mode back


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fail(path: Path, err: OSError) -> ArtifactError:
    return ArtifactError(f"{path}: cannot write ({err.strerror or err})")


@contextmanager
def staged(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (e.g. safetensors); on success it is
    fsync'd and renamed over ``path``, on any error removed."""
    path = Path(path)
    tmp = _temp_name(path)
    _clean_stale(path)
    try:
        yield tmp
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)
        raise _fail(path, err) from None
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(path.parent)


def _clean_stale(path: Path) -> None:
    """Remove temporaries of ``path`` left by writers that were killed (their process is gone)."""
    with suppress(OSError):
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            pid = stale.name[len(path.name) + 2:-4]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                _remove(stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    with suppress(OSError):
        path.unlink(missing_ok=True)


@contextmanager
def replacing(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open(path, mode)`` that writes a temporary file and renames it over ``path`` when the block succeeds."""
    with staged(path) as tmp:
        try:
            fh = tmp.open(mode, **kwargs)
        except OSError as err:
            raise _fail(Path(path), err) from None
        with fh:
            yield fh
            fh.flush()


def write_text(path: str | Path, text: str) -> Path:
    with replacing(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with replacing(path, "wb") as fh:
        fh.write(data)
    return Path(path)


@contextmanager
def replacing_dir(directory: str | Path) -> Iterator[Path]:
    """A staging directory to fill; on success it replaces ``directory`` as a whole. The old directory is renamed
    to ``NAME.previous`` first and removed last, so a crash at any moment leaves either the new directory or the
    old one (as ``NAME`` or ``NAME.previous``, see :func:`existing_dir`)."""
    directory = Path(directory)
    parent, name = directory.parent, directory.name
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(f".{name}.staging-*"):  # left by a writer killed earlier
            shutil.rmtree(stale, ignore_errors=True)
        staging = parent / f".{name}.staging-{os.getpid()}"
        staging.mkdir()
    except OSError as err:
        raise _fail(directory, err) from None
    try:
        yield staging
        fsync_dir(staging)
        previous = parent / f"{name}.previous"
        if directory.exists():
            if previous.exists():  # a complete older copy from an interrupted swap: the current one is newer
                shutil.rmtree(previous)
            os.rename(directory, previous)
        os.rename(staging, directory)
        fsync_dir(parent)
        shutil.rmtree(previous, ignore_errors=True)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise _fail(directory, err) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def existing_dir(directory: str | Path) -> Path:
    """``directory``, or its ``.previous`` copy when a save was interrupted between its two renames."""
    directory = Path(directory)
    previous = directory.with_name(f"{directory.name}.previous")
    return previous if not directory.exists() and previous.is_dir() else directory
