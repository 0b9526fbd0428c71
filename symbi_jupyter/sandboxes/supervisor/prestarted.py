# The bootstrap of a pre-started interpreter (tier None), not a module of this package.
#
# A spare monitor writes this file as the next run's code file and starts Python on
# it, as root, before any request comes: Python's start-up (about 7 ms) is then paid
# while the notebook is idle. When the run's request arrives the monitor replaces
# the file with the cell's code and sends "go" with the run's stdout and stderr and a
# descriptor of the code file: by then the directory is the run user's, so root here
# must not open that path (a link put there would be followed as root). The
# bootstrap puts those on fds 1 and 2, reads the code, drops to the run's user and
# runs the code as __main__ with the cell runner's _symbi_run (cellrun.py, which
# follows this in the file), so that the cell sees what a fresh interpreter on the
# cell runner shows: the same argv, sys.path[0], __file__, environment, limits, frame
# names and exit status.
#
# No docstring and no module-level name but the functions: this file runs as the
# run's __main__, whose namespace the cell's code must find as Python leaves it.


def _symbi_prestarted(uid, gid):
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
    with open(fds[2], "rb") as f:
        source = f.read()
    # Nothing of the cell's runs (nor compiles: a warning would read its file) as root.
    if uid is not None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    main = globals()
    main["_symbi_run"](source, main["__file__"], main)  # cellrun.py's, later in the file
