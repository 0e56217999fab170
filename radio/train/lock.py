"""One run per output directory, and output directories checked writable before any compute.

`RunLock` is a lock file in `trainer.default_root_dir` (`.radio-run.lock`, JSON: host, pid, start time) held by
the launching process for the whole run. Two runs in one directory would share checkpoint names, the logger's
version directory and `--ckpt_path last`; the second one fails at once, naming the first.

The lock is an exclusive `fcntl.flock` on the file: the kernel drops it when its process dies however it dies, so
the file a killed run leaves behind is simply taken over. Where the file system does not support flock, the file
is created with O_CREAT|O_EXCL instead and a leftover one is taken over when it names a process of this host that
is no longer alive.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
from datetime import datetime, timezone
from typing import Any

from radio.schema import ConfigError

LOCK_NAME = ".radio-run.lock"


class RunLockedError(ConfigError):
    """Another run holds the directory's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def launching_process() -> bool:
    """True in the process that owns a run: not a worker rank started by a launcher (torchrun, Lightning's
    subprocess launcher, SLURM tasks) other than global rank 0."""
    return all(os.environ.get(k, "0") in ("0", "") for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


class RunLock:
    """The lock of one run directory (see the module docstring). `acquire()` raises RunLockedError naming the
    holder; `release()` removes the file (also safe when never acquired)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.path = os.path.join(self.root, LOCK_NAME)
        self._fd: int | None = None
        self.taken_over: dict[str, Any] | None = None  # the holder recorded by a run that ended without release

    @staticmethod
    def _me() -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def holder(self) -> dict[str, Any] | None:
        """What the lock file says (None when absent or unreadable)."""
        try:
            with open(self.path) as f:
                info = json.load(f)
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def _locked_error(self, info: dict[str, Any] | None) -> RunLockedError:
        who = (f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}" if info
               else "a run that has not written its details yet")
        return RunLockedError(f"trainer.default_root_dir {self.root} is in use by another run ({who}; lock file "
                              f"{self.path}): wait for it to end or give this run another default_root_dir")

    def acquire(self) -> RunLock:
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"trainer.default_root_dir {self.root}: cannot create it ({e.strerror or e})") from e
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise ConfigError(f"trainer.default_root_dir {self.root} is not writable: cannot create "
                                  f"{LOCK_NAME} ({e.strerror or e})") from e
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._locked_error(self.holder()) from None
            except (ImportError, OSError) as e:  # no flock on this file system (or platform)
                os.close(fd)
                if isinstance(e, OSError) and e.errno not in (errno.ENOLCK, errno.EINVAL, errno.ENOSYS,
                                                              errno.EOPNOTSUPP):
                    raise
                return self._acquire_exclusive()
            try:  # the file we locked may have been removed by a run releasing it in the meantime
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self._fd = fd
            self._note_takeover(self.holder())
            self._write(fd)
            return self
        raise self._locked_error(self.holder())

    def _acquire_exclusive(self) -> RunLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                info = self.holder()
                if info and info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) \
                        and not _pid_alive(info["pid"]):
                    self._note_takeover(info)
                    try:
                        os.remove(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                raise self._locked_error(info) from None
            self._fd = fd
            self._write(fd)
            return self
        raise self._locked_error(self.holder())

    def _note_takeover(self, info: dict[str, Any] | None) -> None:
        if info and info.get("pid") != os.getpid():
            self.taken_over = info

    def _write(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(self._me()).encode())
        os.fsync(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.remove(self.path)  # while still locked: a run starting now finds no file or a fresh one
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def check_writable(path: str, what: str) -> None:
    """Create `path` if needed and write a probe file into it; ConfigError naming `what` and the path if not."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".radio-write-test.", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"{what} {path} is not writable ({e.strerror or e})") from e
