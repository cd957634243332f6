"""What the bench_*.py scripts share: one run of a script in a subprocess, timed by the operating system."""
import resource
import shlex
import subprocess
import time


def timed_run(cmd, **kwargs):
    """Run `cmd` to its end (keyword arguments go to subprocess.run, e.g. cwd, env).

    Returns (the CompletedProcess, user + system CPU seconds of the child, wall seconds); RuntimeError with the
    command and the end of its stderr if it exits non-zero."""
    cmd = [str(c) for c in cmd]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, wall
