"""``mim train diffengine`` and ``mim run diffengine`` end as diffengine's
own commands do: with the command's line and status, and a graceful stop on
Ctrl-C.

openmim runs diffengine's script with ``subprocess.check_call``, which on a
failure raises ``CalledProcessError`` (a traceback below diffengine's line,
status 1), and on Ctrl-C at a terminal, where mim gets SIGINT beside the
script, kills the script 0.25 s later, before it can save a checkpoint.
``diffengine-mim.pth``, installed beside this module, imports it only in a
process whose arguments start with ``train diffengine`` or ``run
diffengine``; it replaces ``subprocess.check_call`` there. It imports
neither torch nor diffengine: it runs in mim's process only.
"""
import os
import signal
import subprocess
import sys
import warnings

# mim imports pkg_resources, which setuptools deprecates: four warnings that
# no diffengine user can act on
# (mim's own import, and the ones its commands make through importlib)
warnings.filterwarnings("ignore", message="pkg_resources is deprecated",
                        category=UserWarning,
                        module=r"(mim\..*|importlib)$")


def check_call(*popenargs, **kwargs) -> int:
    """``subprocess.check_call`` that leaves the stop signals to the command
    and exits with its status.

    While the command runs, SIGINT is ignored (the command got the
    terminal's own) and SIGTERM is passed on to it. A command that fails
    ends this process with its status, or with its signal when a signal
    killed it.

    Returns:
        int: 0, when the command succeeded.
    """
    with subprocess.Popen(*popenargs, **kwargs) as child:
        # set after the start: an ignored SIGINT would be inherited
        previous = {
            signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
            signal.SIGTERM: signal.signal(
                signal.SIGTERM,
                lambda signum, frame: child.send_signal(signum)),
        }
        try:
            status = child.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if status < 0:
        # die of the same signal, so that a shell sees what the command did
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        status = 128 - status
    if status:
        sys.exit(status)
    return 0


subprocess.check_call = check_call
