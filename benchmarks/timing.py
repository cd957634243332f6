"""What the bench_*.py scripts share: one run of a script in a subprocess, timed by the operating system."""
import contextlib
import os
import resource
import shlex
import subprocess
import tempfile
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


def timed_runs(cmds, cores, cwds, envs):
    """Run the commands at the same time, command i pinned to CPU core cores[i] (Linux) in directory cwds[i] with
    environment envs[i], each to its end.

    Machine drift (clock speed, other processes) then hits all of them alike, so their ratio is far less noisy than
    that of runs one after another. Returns [(user + system CPU seconds, wall seconds)] in the order of `cmds`: each
    child's own figures (os.wait4); RuntimeError as timed_run's if one exits non-zero."""
    with contextlib.ExitStack() as stack:
        errs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in cmds]
        start = time.perf_counter()
        procs = [subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=err, cwd=cwd, env=env,
                                  preexec_fn=lambda core=core: os.sched_setaffinity(0, {core}))
                 for cmd, core, cwd, env, err in zip(cmds, cores, cwds, envs, errs)]
        results = {}
        while len(results) < len(procs):
            pid, status, usage = os.wait4(-1, 0)  # whichever ends first, with its own resource usage
            for i, proc in enumerate(procs):
                if proc.pid == pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    results[i] = (usage.ru_utime + usage.ru_stime, time.perf_counter() - start)
        for cmd, proc, err in zip(cmds, procs, errs):
            if proc.returncode:
                err.seek(0)
                raise RuntimeError(f"{shlex.join(map(str, cmd))} failed (exit {proc.returncode}):\n{err.read()[-3000:]}")
    return [results[i] for i in range(len(procs))]
