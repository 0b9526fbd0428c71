"""The worker's own figures: its memory (``/proc/self/status``) and CPU, as it reports
them. The host keeps them apart as the sandbox's claim (``sandbox_reported``): it has
its own, measured from outside.

Part of the worker agent (:mod:`.agent`): stdlib only, shipped as source with it by
:func:`.shipping.worker_source`.
"""

import resource


def proc_status(*keys):
    """Values in bytes of ``/proc/self/status`` fields such as VmRSS (None if absent)."""
    found = dict.fromkeys(keys)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in found:
                    found[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return [found[k] for k in keys]


def reset_hwm():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_times():
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + kids.ru_utime, me.ru_stime + kids.ru_stime


def peak_memory(hwm_was_reset):
    """``(bytes, method)``: this cell's peak RSS, else the session's peak so far."""
    if hwm_was_reset:
        (hwm,) = proc_status("VmHWM")
        if hwm is not None:
            return hwm, "worker-hwm"
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (maxrss * 1024, "worker-maxrss-session") if maxrss else (None, None)


def usage():
    rss, hwm = proc_status("VmRSS", "VmHWM")
    return {"memory_bytes": rss, "peak_memory_bytes": hwm, "cpu_seconds": sum(cpu_times())}
