"""Test plugin: signal the run after its second cell: SIGKILL, as after a time limit's grace (default), or the
signal named in GCB_TEST_SIGNAL (INT: a Ctrl-C; TERM: what Slurm sends at a time limit)."""
import os
import signal

_done = 0
# a process started in the background by a non-interactive shell inherits SIGINT ignored, and Python then
# installs no KeyboardInterrupt handler; a terminal's Ctrl-C always has one, so this test gives it one too
signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_runtest_logfinish(nodeid, location):
    global _done
    _done += 1
    if _done == 2:
        os.kill(os.getpid(), getattr(signal, f"SIG{os.environ.get('GCB_TEST_SIGNAL', 'KILL')}"))
