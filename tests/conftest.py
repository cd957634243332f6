"""Helpers shared by the tests: run a script as a user does, read what it logged, strip its ERA lines.

Tests that check the run skeleton (signals, resume, bad input) go through the command line, in a subprocess,
exactly as a user or a cluster scheduler drives the scripts; docs/skeleton.md describes what they check.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

if os.environ.get("PYTEST_XDIST_WORKER"):  # two test processes on two cores: one torch thread each
    import torch
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("sac_era.py", "ppo_era.py", "tdmpc2_era.py", "resnet_era.py", "grpo_era.py")
TIMING_TAGS = ("charts/SPS", "perf/", "time/")  # wall-clock figures: the only scalars two equal runs may differ in


def script_env(**extra):
    """The environment of a test subprocess: one thread, no GPU, unbuffered output, `extra` on top."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def command(script, *flags):
    path = Path(script) if os.path.isabs(str(script)) else ROOT / script
    return [sys.executable, str(path), *map(str, flags)]


def run_script(script, *flags, timeout=600, cwd=ROOT, **env):
    """Run `python script flags...` to the end; returns the CompletedProcess (text stdout/stderr)."""
    return subprocess.run(command(script, *flags), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=script_env(**env))


def start_script(script, *flags, cwd=ROOT, **env):
    """Start `python script flags...` in the background (stdout/stderr piped, text), leading its own process group
    (so that a signal can go to the whole group, as a terminal's Ctrl-C does)."""
    return subprocess.Popen(command(script, *flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, env=script_env(**env), start_new_session=True)


def signal_when(proc, ready, sig=signal.SIGTERM, timeout=600, poll=0.05, group=False):
    """Send `sig` to `proc` (`group`: to its whole process group, its sub-processes too, as a terminal's Ctrl-C does)
    once `ready()` is true, then wait for it; returns (returncode, stdout, stderr)."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (exit {proc.returncode}) before it could be signalled:\n{err[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("the run never became ready for the signal")
        time.sleep(poll)
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def events_written(runs_dir, n=1):
    """A `ready` for signal_when: `n` tensorboard event files exist under `runs_dir` (a run writes one when it starts
    and one each time it is resumed). The scripts install their signal handlers before that, so a signal sent then is
    always handled, as early in the run as a test can ask for (where exactly it lands still depends on the machine)."""
    return lambda: len(list(Path(runs_dir).rglob("events.out.tfevents.*"))) >= n


def run_dirs(runs_dir):
    """The run directories (those holding tensorboard event files) under `runs_dir`."""
    return sorted({p.parent for p in Path(runs_dir).rglob("events.out.tfevents.*")})


def only_run_dir(runs_dir):
    dirs = run_dirs(runs_dir)
    assert len(dirs) == 1, f"expected one run under {runs_dir}, found {dirs}"
    return dirs[0]


def scalars(run_dir):
    """{tag: [(step, value), ...]} of every scalar a run logged, in logging order (resumed runs included)."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def without_timing(logged):
    return {tag: values for tag, values in logged.items() if not tag.startswith(TIMING_TAGS)}


def assert_same_scalars(a, b):
    """Two runs logged the same scalars, bit for bit, at the same steps (timing tags aside)."""
    a, b = without_timing(a), without_timing(b)
    assert sorted(a) == sorted(b), f"tags differ: only in first {sorted(set(a) - set(b))}, only in second {sorted(set(b) - set(a))}"
    for tag in a:
        assert a[tag] == b[tag], f"{tag} differs: {a[tag][:5]}... vs {b[tag][:5]}..."


def strip_era(script, dest):
    """`grep -v "# ERA" script > dest/<name without _era>`: the baseline the tags promise. Returns its path."""
    source = ROOT / script
    out = Path(dest) / source.name.replace("_era.py", ".py")
    out.write_text("".join(line for line in source.read_text().splitlines(keepends=True) if "# ERA" not in line))
    return out


def file_state(paths):
    """Bytes and modification time of each existing file: to check that bad input touched nothing."""
    return {str(p): (Path(p).read_bytes(), Path(p).stat().st_mtime_ns) for p in paths if Path(p).exists()}


def assert_bad_input(script, *flags, flag, protect=(), cwd=ROOT, timeout=300):
    """The run refuses `flags` with one line `error: ...` naming `flag`, exit code 2, no traceback, and leaves the
    files in `protect` (a checkpoint, say) exactly as they were."""
    before = file_state(protect)
    proc = run_script(script, *flags, cwd=cwd, timeout=timeout)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}, stderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], proc.stderr
    assert file_state(protect) == before, "bad input changed a file it must not touch"
    return lines[0]


@pytest.fixture
def one_thread():
    """torch on one thread inside the test process (results do not depend on the machine's core count)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
