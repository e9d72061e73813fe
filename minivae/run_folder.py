"""The folder of a training run (``--out``, or the ``--resume`` DIR): created or checked, locked against a
second run, cleared of what a killed run left half-written, its saved settings read, and the settings
of the run to come merged from the command line and the saved run.

What a run writes there is listed in minivae/train.py; every file is written atomically
(minivae/fileio.py), so the folder holds, at any moment, the files of the last complete epoch.
"""

import contextlib
import os

from . import settings as table
from .checkpoint import CONFIG_NAME
from .checkpoint_checks import read_run_settings
from .errors import MinivaeError
from .fileio import LOCK_NAME, folder_lock


@contextlib.contextmanager
def opened(out, resuming):
    """The run folder ``out``, prepared (``prepare``) and locked for the block; yields the saved run's
    settings (``read_saved_run``: None for a fresh run), after removing stale temporaries."""
    prepare(out, resuming)
    with folder_lock(out, lambda pid: MinivaeError(
            f"another run (process {pid}) is writing to {out}; wait for it to finish, or choose another "
            f"--out (if process {pid} is not a minivae run, delete {os.path.join(out, LOCK_NAME)})")):
        saved = read_saved_run(out, resuming)
        remove_stale_temporaries(out)
        yield saved


def prepare(out, resuming):
    """Create ``--out`` (never the folder of ``--resume``, which must hold a run already)."""
    if resuming and not os.path.isdir(out):
        raise MinivaeError(f"--resume {out}: no such folder, so there is no run to resume; pass the --out "
                           f"folder of an earlier run, or start a new run with --out {out}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise MinivaeError(f"--out {out}: is a file, not a folder; choose another --out")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise MinivaeError(f"--out {out}: cannot create the folder ({error.strerror}); choose a writable folder")
    if not os.access(out, os.W_OK | os.X_OK):
        if resuming:
            raise MinivaeError(f"--resume {out}: the folder is not writable, so the run cannot continue there; "
                               f"make it writable, or copy it to a writable place and resume the copy")
        raise MinivaeError(f"--out {out}: the folder is not writable; choose a writable folder")


def remove_stale_temporaries(out):
    """Delete the temporary files (``.<name>.<random>.tmp``) that ``atomic_write`` leaves behind when a
    run is killed in the middle of writing a file. Called under the folder's lock: no other run of
    minivae is writing there."""
    for name in os.listdir(out):
        if name.startswith(".") and name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(out, name))


def read_saved_run(out, resuming):
    """The saved settings (config.json, migrated and checked) of the run in ``out``; None if there is
    none. A fresh run refuses a folder that already holds one, so that nothing is overwritten."""
    path = os.path.join(out, CONFIG_NAME)
    if not os.path.exists(path):
        if resuming:
            raise MinivaeError(f"--resume {out}: no {CONFIG_NAME} there, so there is no run to resume; "
                               f"start one with --out {out}")
        return None
    if not resuming:
        raise MinivaeError(f"--out {out} already holds a run ({CONFIG_NAME}); continue it with --resume {out}, "
                           f"or choose another --out")
    return read_run_settings(path, "fix it, or start a new run with another --out")


def merge(given, saved, names, resume_dir=None):
    """The settings ``names`` of the run to come. A fresh run (``saved`` None): ``given`` (the command
    line) over the table's defaults. A resumed one: the saved run's, with the given ones a resume may
    change (``settings.resumable``); any other given setting must equal the saved one (one the saved
    model does not use is left to ``settings.unused`` to refuse)."""
    if saved is None:
        return {**table.defaults(names), **given}
    changeable = table.resumable(names)
    for name, value in given.items():
        if name not in changeable and name in saved and saved[name] != value:
            flag = table.option(name)
            raise MinivaeError(f"--resume {resume_dir}: the run was started with {flag} {_shown(saved[name])}, "
                               f"not {_shown(value)}; drop {flag} to continue it, or start a new run with "
                               f"another --out")
    return {**{name: saved[name] for name in names if name in saved},
            **{name: value for name, value in given.items() if name in changeable}}


def _shown(value):
    """A value as its flag takes it: a list as its items (``--hidden 16 --hidden 8`` -> "16 8")."""
    return " ".join(str(item) for item in value) if isinstance(value, list) else str(value)
