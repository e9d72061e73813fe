"""Ctrl-C for the command-line tools: wherever it lands, the command stops with one line and exit 130.

Python turns SIGINT into a KeyboardInterrupt raised in the main thread between two bytecodes. Where
that is a callback (a weakref's, a ``__del__``, a garbage collection), Python prints "Exception
ignored in ..." and drops the exception, and the run goes on. So the commands (``minivae.train``,
``minivae.evaluate``) install one ``InterruptGuard`` that

- records every SIGINT (``pending``) before it raises, so that a dropped KeyboardInterrupt is raised
  again by the next ``check_interrupt()``: between training steps, between evaluation batches and
  before and after every file write (``fileio.atomic_write``);
- keeps quiet about a KeyboardInterrupt that Python drops (``sys.unraisablehook``), since the next
  check raises it;
- only records while the command is not yet inside ``main`` (start-up imports): ``main`` raises it
  at its first check, where it is reported in one line.

Standard library only, so that ``minivae/__init__.py`` can install it before NumPy is imported.
"""

import contextlib
import signal
import sys
import threading

COMMANDS = ("minivae.train", "minivae.evaluate")
"""The modules whose ``python -m`` run installs the guard at import time."""


class InterruptGuard:
    """The SIGINT handler of a command: records each interrupt, and raises it while ``raising``."""

    def __init__(self, pending=False):
        self.pending = pending
        self.raising = False

    def __call__(self, signum, frame):
        self.pending = True
        if self.raising:
            raise KeyboardInterrupt

    def check(self):
        """Raise KeyboardInterrupt when an interrupt came and was not raised (or was dropped)."""
        if self.pending:
            raise KeyboardInterrupt

    def unraisable_hook(self, previous):
        """A ``sys.unraisablehook`` that drops a KeyboardInterrupt this guard will raise again."""
        def hook(unraisable):
            if self.pending and issubclass(unraisable.exc_type, KeyboardInterrupt):
                return
            previous(unraisable)
        return hook


def installed_guard():
    """The InterruptGuard handling SIGINT now, or None."""
    handler = signal.getsignal(signal.SIGINT)
    return handler if isinstance(handler, InterruptGuard) else None


def check_interrupt():
    """Raise KeyboardInterrupt if a command's guard recorded an interrupt; a no-op without one."""
    guard = installed_guard()
    if guard is not None:
        guard.check()


def install_for_commands():
    """At import time of ``python -m minivae.train`` (or evaluate) only: record SIGINT from the first
    moment, so that an interrupt during the start-up imports is reported by ``main`` in one line."""
    argv = getattr(sys, "orig_argv", ())
    launched = any(flag == "-m" and module in COMMANDS for flag, module in zip(argv, argv[1:]))
    if launched and threading.current_thread() is threading.main_thread() and installed_guard() is None:
        signal.signal(signal.SIGINT, InterruptGuard())


@contextlib.contextmanager
def interrupt_guard():
    """Inside the block, SIGINT raises KeyboardInterrupt and is also recorded (``check_interrupt``),
    and a dropped one is not printed; an interrupt recorded before the block (during the start-up
    imports) is pending inside it, raised by the first ``check_interrupt()``.
    The previous handler and hook are restored on exit (an interrupt after the block is then only
    recorded by the start-up guard, or handled as before)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield None
        return
    previous_handler, previous_hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    if previous_handler is None:  # a handler installed from C: Python cannot put it back
        previous_handler = signal.default_int_handler
    early = previous_handler if isinstance(previous_handler, InterruptGuard) else None
    guard = InterruptGuard(pending=early is not None and early.pending)
    signal.signal(signal.SIGINT, guard)
    sys.unraisablehook = guard.unraisable_hook(previous_hook)
    try:
        guard.raising = True
        yield guard
    finally:
        guard.raising = False
        signal.signal(signal.SIGINT, previous_handler)
        sys.unraisablehook = previous_hook
        if early is not None:
            early.pending = early.pending or guard.pending
