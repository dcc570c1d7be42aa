"""Test plugin: SIGKILL the run after its second cell, as a Slurm time limit would."""
import os
import signal

_done = 0


def pytest_runtest_logfinish(nodeid, location):
    global _done
    _done += 1
    if _done == 2:
        os.kill(os.getpid(), signal.SIGKILL)
