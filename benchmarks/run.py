"""Run N seeds x {ERA, baseline} of one of the project's scripts, several processes at once; resumable.

    python benchmarks/run.py --script sac_era.py --seeds 1 2 3 --workers 2 -- \
        --env-id dm_control/cheetah-run-v0 --total-timesteps 50000

Everything after `--` is passed to the script unchanged. Each run gets its own directory

    <out>/<script stem>/<group>/<variant>/seed<k>/
        run.json   what was run (script, variant, seed, group, the script's extra flags, the command)
        log.txt    the script's stdout + stderr (appended on every attempt)
        runs/      the script's --runs-dir: tensorboard events and checkpoint.pt under runs/<run_name>/
        DONE       written when the script exits with code 0; a run with DONE is skipped next time
                   (a script stopped by a signal saves its checkpoint and exits 130/143: not DONE)

<group> is `--group`, else the value of the script's `--env-id`/`--dataset` flag, else "default".
An unfinished run that left a checkpoint.pt is continued with `--resume`; without one it starts again
(the partial runs/ is kept as runs.stale<N>/). `benchmarks/plot.py <out>` draws the curves.
"""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Literal, Optional, Tuple

import tyro

REPO = Path(__file__).resolve().parent.parent
RESERVED = ("--seed", "--runs-dir", "--era", "--no-era", "--resume")  # set by this runner, per run
GROUP_FLAGS = ("--env-id", "--dataset")  # its value names the group (one panel in plot.py)
INTERRUPTED = threading.Event()  # Ctrl-C or SIGTERM of the runner: nothing started afterwards is marked DONE
RUNNING = set()  # live subprocesses, to pass a Ctrl-C on to them exactly once


@dataclass
class Args:
    script: str
    """the script to run, e.g. sac_era.py (looked up in the current directory, then in the repository root)"""
    seeds: Tuple[int, ...] = (1, 2, 3)
    """seeds to run, each for every variant"""
    variants: Tuple[Literal["era", "baseline"], ...] = ("era", "baseline")
    """which variants to run: era passes --era to the script, baseline --no-era"""
    workers: int = 1
    """how many runs at once"""
    out: str = "results"
    """root of the results tree <out>/<script stem>/<group>/<variant>/seed<k>/"""
    group: Optional[str] = None
    """name of this configuration in the tree (default: the value of --env-id/--dataset, else 'default')"""
    threads: Optional[int] = None
    """OMP/MKL threads per run (default: $OMP_NUM_THREADS if set, else CPU count // workers, at least 1)"""
    timeout: Optional[int] = None
    """seconds per run before it is stopped with SIGTERM (the script finishes its unit, saves, exits 143)"""
    grace: int = 900
    """seconds a stopped script gets to finish its unit and save before it is killed"""
    resume: bool = True
    """continue an unfinished run from its checkpoint.pt when there is one"""
    dry_run: bool = False
    """print the commands without running them"""


def group_name(args: Args, extra: List[str]) -> Tuple[str, str]:
    """(directory name, label for plots) of this configuration."""
    label = args.group
    for i, tok in enumerate(extra):
        if label is None and tok in GROUP_FLAGS and i + 1 < len(extra):
            label = extra[i + 1]
        elif label is None and "=" in tok and tok.split("=")[0] in GROUP_FLAGS:
            label = tok.split("=", 1)[1]
    label = label or "default"
    return re.sub(r"[^\w.=-]+", "_", label).strip(".") or "default", label


def check_args(args: Args, extra: List[str]) -> Path:
    script = Path(args.script)
    if not script.is_file():
        script = REPO / args.script
    if not script.is_file():
        raise ValueError(f"--script {args.script!r}: no such file (looked in {Path.cwd()} and {REPO})")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must be a non-empty list of distinct integers, got {args.seeds}")
    if not args.variants or len(set(args.variants)) != len(args.variants):
        raise ValueError(f"--variants must be distinct values of era/baseline, got {args.variants}")
    if args.timeout is not None and args.timeout <= 0:
        raise ValueError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.grace < 1:
        raise ValueError(f"--grace must be >= 1 second, got {args.grace}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    for tok in extra:
        if tok.split("=")[0] in RESERVED:
            raise ValueError(f"{tok!r} after '--' is set by the runner for each run; remove it ({RESERVED})")
    return script.resolve()


def plan(args: Args, script: Path, extra: List[str]) -> List[dict]:
    """One job per (variant, seed): its directory and its exact command."""
    (group, label), jobs = group_name(args, extra), []
    for variant in args.variants:
        for seed in args.seeds:
            run_dir = Path(args.out).resolve() / script.stem / group / variant / f"seed{seed}"
            meta = dict(script=script.name, variant=variant, seed=seed, group=group, label=label, extra=extra)
            old = run_dir / "run.json"
            if old.exists():
                prev = json.loads(old.read_text())
                if (prev["script"], prev["extra"]) != (meta["script"], meta["extra"]):
                    raise ValueError(
                        f"{run_dir} was run with different flags: {shlex.join(prev['extra'])!r}, now "
                        f"{shlex.join(extra)!r}. Pass another --group or --out to keep both."
                    )
            cmd = [sys.executable, str(script), "--seed", str(seed), "--runs-dir", str(run_dir / "runs")]
            cmd += ["--era" if variant == "era" else "--no-era"] + extra
            jobs.append(dict(meta, dir=run_dir, cmd=cmd))
    return jobs


def execute(job: dict, args: Args, threads: int) -> dict:
    run_dir, cmd = job["dir"], list(job["cmd"])
    if (run_dir / "DONE").exists():
        return dict(job, status="skipped", wall=0.0)
    if INTERRUPTED.is_set():
        return dict(job, status="interrupted", wall=0.0, log=run_dir / "log.txt")
    ckpts = sorted((run_dir / "runs").glob("**/checkpoint.pt"), key=lambda p: p.stat().st_mtime)
    resume = bool(ckpts) and args.resume
    if resume:
        cmd += ["--resume", str(ckpts[-1])]
    print("$", shlex.join(cmd), flush=True)
    if args.dry_run:
        return dict(job, status="dry-run", wall=0.0)
    if not resume and (run_dir / "runs").exists():  # a partial run without checkpoint: keep it aside
        n = 1 + sum(1 for _ in run_dir.glob("runs.stale*"))
        (run_dir / "runs").rename(run_dir / f"runs.stale{n}")
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {k: job[k] for k in ("script", "variant", "seed", "group", "label", "extra")}
    (run_dir / "run.json").write_text(json.dumps(dict(meta, cmd=cmd), indent=1))
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start, status = time.time(), None
    with open(run_dir / "log.txt", "a") as log:
        log.write(f"\n### {time.strftime('%Y-%m-%d %H:%M:%S')} $ {shlex.join(cmd)}\n")
        log.flush()
        # own session: a terminal Ctrl-C reaches only this runner, which passes one SIGINT on
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        RUNNING.add(proc)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the scripts finish their unit, save a checkpoint, exit 143
            try:
                proc.wait(timeout=args.grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rc, status = proc.returncode, "timeout"
        finally:
            RUNNING.discard(proc)
    wall = time.time() - start
    if rc == 0 and status is None and not INTERRUPTED.is_set():
        tmp = run_dir / "DONE.tmp"
        tmp.write_text(json.dumps({"returncode": 0, "wall_s": round(wall, 1), "finished": time.ctime()}))
        os.replace(tmp, run_dir / "DONE")
        status = "done"
    status = status or ("interrupted" if INTERRUPTED.is_set() else f"failed (exit {rc})")
    return dict(job, status=status, wall=wall, log=run_dir / "log.txt")


def main(argv: Optional[List[str]] = None) -> List[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = tyro.cli(Args, args=argv[:cut]), argv[cut + 1:]
    script = check_args(args, extra)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # `cmd &` ignores SIGINT; the scripts would inherit it
        signal.signal(signal.SIGINT, signal.default_int_handler)
    jobs = plan(args, script, extra)
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, os.cpu_count() // args.workers)
    todo = sum(not (j["dir"] / "DONE").exists() for j in jobs)
    print(f"{len(jobs)} runs of {script.name} ({todo} to do) under {Path(args.out).resolve()}, "
          f"{args.workers} at once, {threads} threads each", flush=True)
    results = []
    with ThreadPoolExecutor(args.workers) as pool:
        try:
            for res in pool.map(lambda j: execute(j, args, threads), jobs):
                results.append(res)
                if res["status"] not in ("skipped", "dry-run"):
                    print(f"[{len(results)}/{len(jobs)}] {res['variant']} seed {res['seed']}: {res['status']} "
                          f"in {res['wall']:.0f} s, log {res['log']}", flush=True)
        except KeyboardInterrupt:  # the scripts finish their unit and save a checkpoint on SIGINT; wait for them
            INTERRUPTED.set()
            for proc in list(RUNNING):
                proc.send_signal(signal.SIGINT)
            pool.shutdown(wait=True, cancel_futures=True)
            print("interrupted: run the same command again to continue", flush=True)
            sys.exit(130)
    print(f"\n{'variant':<9} {'seed':>5}  {'status':<18} {'wall s':>7}  directory")
    for r in results:
        print(f"{r['variant']:<9} {r['seed']:>5}  {r['status']:<18} {r['wall']:>7.0f}  {r['dir']}")
    failed = [r for r in results if r["status"].startswith(("failed", "timeout"))]
    for r in failed:
        print(f"FAILED {r['variant']} seed {r['seed']}: {r['status']}; see {r['log']}")
    return results


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops the runs as Ctrl-C does
    results = main()
    sys.exit(1 if any(r["status"].startswith(("failed", "timeout")) for r in results) else 0)
