"""``%time``, ``%%time``, ``%timeit`` and ``%%timeit`` in the sandbox, with IPython's
options and output (:class:`TimingMagics`, a part of :class:`.agent_magics.Shell`).

Part of the worker agent (:mod:`.agent`): stdlib only, shipped as source with it by
:func:`.shipping.worker_source`.
"""

import ast
import time

from .agent_calls import UsageError, options


def _format_time(seconds, precision=3):
    """A duration as IPython's %time and %timeit write it (``1.23 ms``, ``2min 3s``)."""
    if seconds >= 60.0:
        parts, left = [], seconds
        for suffix, length in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
            value = int(left / length)
            if value > 0:
                left %= length
                parts.append(f"{value}{suffix}")
            if left < 1:
                break
        return " ".join(parts)
    units, scaling = ("s", "ms", "\xb5s", "ns"), (1, 1e3, 1e6, 1e9)
    order = 3
    if seconds > 0.0:
        import math

        order = min(-int(math.floor(math.log10(seconds)) // 3), 3)
    return f"{seconds * scaling[order]:.{precision}g} {units[order]}"


class TimeitResult:
    """What ``%timeit -o`` returns, with IPython's attributes and text."""

    def __init__(self, loops, repeat, best, worst, all_runs, precision):
        self.loops, self.repeat = loops, repeat
        self.best, self.worst, self.all_runs = best, worst, all_runs
        self._precision = precision
        self.timings = [t / loops for t in all_runs]

    @property
    def average(self):
        return sum(self.timings) / len(self.timings)

    @property
    def stdev(self):
        mean = self.average
        return (sum((t - mean) ** 2 for t in self.timings) / len(self.timings)) ** 0.5

    def __str__(self):
        runs = f"{self.repeat} run{'' if self.repeat == 1 else 's'}"
        loops = f"{self.loops:,} loop{'' if self.loops == 1 else 's'}"
        mean = _format_time(self.average, self._precision)
        std = _format_time(self.stdev, self._precision)
        return f"{mean} \xb1 {std} per loop (mean \xb1 std. dev. of {runs}, {loops} each)"

    def __repr__(self):
        return f"<TimeitResult : {self}>"


class TimingMagics:
    """The timing magics of :class:`.agent_magics.Shell`."""

    def line_time(self, line, call):
        """Time one run of a statement or expression: CPU and wall time, as IPython."""
        return self._time(line, call, cell=False)

    def cell_time(self, line, cell, call):
        return self._time(cell, call, cell=True)

    def _time(self, code, call, cell):
        import resource

        tree = call.parse(code, cell)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = compile(ast.Expression(tree.body.pop().value), call.filename, "eval")
        body = compile(tree, call.filename, "exec")
        before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        exec(body, call.globals, call.locals)
        value = None if last is None else eval(last, call.globals, call.locals)
        wall = time.perf_counter() - wall
        after = resource.getrusage(resource.RUSAGE_SELF)
        user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
        print(
            f"CPU times: user {_format_time(user)}, sys: {_format_time(system)}, "
            f"total: {_format_time(user + system)}"
        )
        print(f"Wall time: {_format_time(wall)}")
        return value

    def line_timeit(self, line, call):
        """Time a statement over many loops (-n N loops, -r R runs, -p P digits, -q
        quiet, -o return the TimeitResult), as IPython's %timeit."""
        return self._timeit(line, None, call)

    def cell_timeit(self, line, cell, call):
        return self._timeit(line, cell, call)

    def _timeit(self, line, cell, call):
        import timeit

        opts, stmt = options(line, "tcqo", "nrp", call.magic)
        setup = "pass"
        if cell is not None:
            setup, stmt = stmt or "pass", cell
        if not stmt.strip():
            raise UsageError(f"{call.magic}: give a statement to time")
        call.parse(stmt, cell is not None)  # a syntax error at the line it is on
        number, repeat, precision = opts.get("n", 0), opts.get("r", 7), opts.get("p", 3)
        clock = time.perf_counter
        if "t" in opts:
            clock = time.time
        elif "c" in opts:
            clock = time.process_time
        timer = timeit.Timer(stmt, setup, timer=clock, globals=call.namespace())
        if number == 0:  # as IPython: enough loops for 0.2 s
            for index in range(10):
                number = 10**index
                if timer.timeit(number) >= 0.2:
                    break
        runs = timer.repeat(repeat, number)
        best, worst = min(runs) / number, max(runs) / number
        result = TimeitResult(number, repeat, best, worst, runs, precision)
        if "q" not in opts:
            if worst > 4 * best and best > 0 and worst > 1e-6:
                print(
                    f"The slowest run took {worst / best:0.2f} times longer than the fastest. "
                    "This could mean that an intermediate result is being cached."
                )
            print(result)
        return result if "o" in opts else None
