# The bootstrap of a pre-started interpreter (tier None), not a module of this package.
#
# A spare monitor writes this file as the next run's code file and starts Python on
# it, as root, before any request comes: Python's start-up (about 7 ms) is then paid
# while the notebook is idle. When the run's request arrives the monitor replaces
# the file with the cell's code and sends "go" with the run's stdout and stderr and a
# descriptor of the code file: by then the directory is the run user's, so root here
# must not open that path (a link put there would be followed as root). The
# bootstrap puts those on fds 1 and 2, compiles the code, drops to the run's user
# and runs the code as __main__, so that the cell sees what `python3 cell.py` shows:
# the same argv, sys.path[0], __file__, environment, limits and exit status.
#
# No docstring and no module-level name but the function: this file runs as the
# run's __main__, whose namespace the cell's code must find as Python leaves it.


def _symbi_prestarted(uid, gid, executable, argv):
    import _socket
    import os
    import sys

    channel = _socket.socket(fileno=3)
    channel.send(b"r")  # started: the monitor may now replace this file
    msg, ancdata, _, _ = channel.recvmsg(16, _socket.CMSG_SPACE(12))
    if not msg:
        os._exit(0)  # discarded unused
    fds = [
        int.from_bytes(data[i : i + 4], sys.byteorder)
        for _, _, data in ancdata
        for i in range(0, len(data) - 3, 4)
    ]
    channel.close()
    del sys.modules["_socket"], channel, msg, ancdata
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    os.close(fds[0])
    os.close(fds[1])
    globals_ = globals()
    path = globals_["__file__"]
    with open(fds[2], "rb") as f:
        source = f.read()
    try:
        code = compile(source, path, "exec", dont_inherit=True)
    except BaseException:
        code = None
    del source
    # Compiling runs none of the cell's code; running it must not happen as root.
    if uid is not None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    if code is None:
        # Code Python rejects: let the interpreter itself say so, in its own words.
        os.execv(executable, argv)
    del globals_["_symbi_prestarted"]
    try:
        exec(code, globals_)
    except SystemExit:
        raise
    except BaseException as exc:
        # As Python reports an uncaught exception, without this function's frame;
        # then re-raised unprinted, so the exit status (1, or death by SIGINT for a
        # KeyboardInterrupt) and the shutdown of threads and atexit are Python's own.
        assert exc.__traceback__ is not None  # it was raised
        tb = exc.__traceback__.tb_next
        exc.__traceback__ = tb
        sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
        try:
            sys.excepthook(type(exc), exc, tb)
        except BaseException as hook_error:
            print("Error in sys.excepthook:", file=sys.stderr)
            sys.__excepthook__(type(hook_error), hook_error, hook_error.__traceback__)
            print("\nOriginal exception was:", file=sys.stderr)
            sys.__excepthook__(type(exc), exc, tb)
        sys.excepthook = lambda *args: None
        raise
