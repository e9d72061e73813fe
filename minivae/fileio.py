"""Atomic, durable file writes shared by checkpoints, metrics, images and dataset downloads.

A write goes to a temporary file in the destination's folder, is flushed and fsync'ed, and is then
renamed over the destination with ``os.replace`` (atomic on POSIX and Windows). A crash at any point
leaves either the old file or the new one, never a half-written file under the final name.
"""

import contextlib
import os
import tempfile

from .interrupts import check_interrupt


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside ``path``; on a clean exit, fsync it and rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched. A command's
    pending Ctrl-C (``interrupts.check_interrupt``) is raised before the write and after the rename.
    """
    check_interrupt()
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise
    _fsync_folder(folder)
    check_interrupt()


def silence(stream):
    """Point the file descriptor of ``stream`` (``sys.stdout``, ``sys.__stderr__``) at the null device,
    so that nothing more written to it reaches its reader. A stream without a file descriptor (one
    captured in tests) is left as it is."""
    try:
        descriptor = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        return
    os.dup2(devnull, descriptor)
    os.close(devnull)


def _fsync_folder(folder):
    """Make the rename itself durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


LOCK_NAME = ".lock"


@contextlib.contextmanager
def folder_lock(folder, owner_error):
    """Hold ``folder/.lock`` (created exclusively, holding this process's id) while the block runs.

    A lock whose process is gone (a run that was killed) is taken over. A lock held by a live
    process raises ``owner_error(pid)``: two runs never write into one folder at once.
    """
    path = os.path.join(folder, LOCK_NAME)
    # The lock appears with its process id already inside (written to a temporary file, then
    # hard-linked into place, which fails if the lock exists): no reader ever sees an empty lock.
    fd, claim = tempfile.mkstemp(prefix=LOCK_NAME + ".", dir=folder)
    try:
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
        except OSError as error:  # a full disk fails here, with no file name of its own
            raise OSError(error.errno, f"cannot write the lock file ({error.strerror})", path) from error
        while True:
            try:
                os.link(claim, path)
                break
            except FileExistsError:
                pid = _lock_owner(path)
                if pid is not None and _process_alive(pid):
                    raise owner_error(pid) from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # stale: its run is gone
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(claim)  # the claim never outlives this call, whatever failed
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _lock_owner(path):
    try:
        with open(path) as handle:
            return int(handle.read().strip() or "0") or None
    except (OSError, ValueError):
        return None


def _process_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
