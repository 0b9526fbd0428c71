# The cell runner: how a one-shot Python cell is run at every tier; not a module of
# this package. Its source (with a call of _symbi_cell) is the interpreter's -c
# program, the cell's file its argument: `python3 -c RUNNER /run/dir/cell.py`. The
# pre-started interpreter's bootstrap (prestarted.py) runs its cell with _symbi_run.
#
# Why: Python names the frames of `python3 /run/dir/cell.py` by the file's absolute
# path, a host directory at tier None, and a traceback or warning would show it. Here
# the cell is compiled under the file's name alone ("cell.py"), at every tier alike.
# Python still finds its source lines, relative to the run's directory (the working
# directory, and sys.path[0]). Otherwise the cell sees what `python3 cell.py` shows:
# the same sys.argv, sys.orig_argv, sys.path[0] and __main__ globals, an uncaught
# exception reported by sys.excepthook without our frame, and Python's own exit status
# (1, or death by SIGINT for a KeyboardInterrupt) after its own shutdown.
#
# No docstring and no module-level name but the functions: this runs as the run's
# __main__, whose namespace the cell's code must find as Python leaves it.


def _symbi_run(source, path, main):
    import os
    import sys

    for own in ("_symbi_cell", "_symbi_run", "_symbi_prestarted"):
        main.pop(own, None)
    try:
        try:
            code = compile(source, os.path.basename(path), "exec", dont_inherit=True)
        except ValueError:
            # A NUL byte: compile() refuses it, Python before 3.12 reads a file past it.
            # The interpreter on the file itself does what `python3 cell.py` does.
            os.execv(sys.executable, [sys.orig_argv[0], path])
        del source
        exec(code, main)
    except SystemExit:
        raise
    except BaseException as exc:
        # As Python reports an uncaught exception, from the cell's first frame (none
        # for code that does not compile); then re-raised unprinted, so the exit status
        # and the shutdown of threads and atexit are Python's own.
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


def _symbi_cell():
    import os
    import sys

    # `python3 -c RUNNER PATH` made these; `python3 PATH` makes them so.
    path = sys.argv.pop(1)
    sys.argv[0] = path
    at = sys.orig_argv.index("-c")
    del sys.orig_argv[at : at + 2]
    if not sys.flags.safe_path:
        sys.path[0] = os.path.dirname(os.path.realpath(path))
    main = globals()
    main["__file__"], main["__cached__"] = path, None
    main["__loader__"] = sys.modules["_frozen_importlib_external"].SourceFileLoader(
        "__main__", path
    )
    with open(path, "rb") as f:
        source = f.read()
    _symbi_run(source, path, main)
