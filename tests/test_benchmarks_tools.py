"""benchmarks/run.py (seed runner) and benchmarks/plot.py (curves + results table) on fake runs."""
import importlib.util
import json
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))  # what a bench_*.py run from the shell sees: benchmarks/timing.py


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run, plot = load("run"), load("plot")

# A stand-in for a project script: same flags, CleanRL run name, tensorboard events, a checkpoint.
FAKE_SCRIPT = textwrap.dedent('''
    import argparse, os, signal, sys, time
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # the real scripts treat both signals alike
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--era", dest="era", action="store_true", default=True)
    p.add_argument("--no-era", dest="era", action="store_false")
    p.add_argument("--env-id", default="Fake-v0")
    p.add_argument("--resume", default=None)
    p.add_argument("--fail-seed", type=int, default=-1)
    p.add_argument("--sleep", type=float, default=0.0)
    a = p.parse_args()
    print("fake script argv", sys.argv[1:], flush=True)
    if a.sleep:
        try:
            time.sleep(a.sleep)
        except KeyboardInterrupt:  # what the real scripts do: save a checkpoint, exit
            os.makedirs(a.runs_dir, exist_ok=True)
            open(os.path.join(a.runs_dir, "interrupted"), "w").close()
            sys.exit(130)
    # tensorboard's own writer: the same event files as torch's SummaryWriter without importing torch
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    exp = "fake" + ("" if a.era else "_noera")
    log_dir = os.path.join(a.runs_dir, f"{a.env_id}__{exp}__{a.seed}__{int(time.time())}")
    w = EventFileWriter(log_dir)
    for i in range(5):
        value = Summary.Value(tag="eval/episodic_return", simple_value=(1.0 + a.era) * i + 0.25 * a.seed)
        w.add_event(Event(wall_time=time.time(), step=100 * i, summary=Summary(value=[value])))
    w.close()
    open(os.path.join(log_dir, "checkpoint.pt"), "w").write("fake")
    if a.seed == a.fail_seed and not a.era:
        print("fake failure", flush=True)
        sys.exit(3)
''')


@pytest.fixture(scope="module")
def runner_out(tmp_path_factory):
    """One run.py call: seeds 1, 2 x {era, baseline}, 2 at once; baseline seed 2 exits with code 3."""
    tmp = tmp_path_factory.mktemp("runner")
    (tmp / "fake_script.py").write_text(FAKE_SCRIPT)
    argv = ["--script", str(tmp / "fake_script.py"), "--seeds", "1", "2", "--workers", "2", "--out",
            str(tmp / "out"), "--", "--env-id", "dm_control/cheetah-run-v0", "--fail-seed", "2"]
    return tmp, argv, run.main(argv)


def test_runner_layout_commands_and_failure(runner_out, capsys):
    tmp, _, results = runner_out
    status = {(r["variant"], r["seed"]): r["status"] for r in results}
    assert status == {("era", 1): "done", ("era", 2): "done", ("baseline", 1): "done",
                      ("baseline", 2): "failed (exit 3)"}
    group = tmp / "out" / "fake_script" / "dm_control_cheetah-run-v0"
    for variant in ("era", "baseline"):
        for seed in (1, 2):
            d = group / variant / f"seed{seed}"
            meta = json.loads((d / "run.json").read_text())
            assert meta["cmd"][1:] == [str(tmp / "fake_script.py"), "--seed", str(seed), "--runs-dir",
                                       str(d / "runs"), "--era" if variant == "era" else "--no-era", "--env-id",
                                       "dm_control/cheetah-run-v0", "--fail-seed", "2"]
            assert meta["label"] == "dm_control/cheetah-run-v0"
            assert len(list((d / "runs").rglob("events.out.tfevents.*"))) == 1
            assert "fake script argv" in (d / "log.txt").read_text()
            assert (d / "DONE").exists() == (status[variant, seed] == "done")
    failed = [r for r in results if r["status"].startswith("failed")][0]
    assert failed["log"] == group / "baseline" / "seed2" / "log.txt"
    assert "fake failure" in failed["log"].read_text()


def test_runner_skips_finished_and_resumes_failed(runner_out, capsys):
    tmp, argv, first = runner_out
    done = {r["dir"]: (r["dir"] / "DONE").stat().st_mtime_ns for r in first if r["status"] == "done"}
    second = run.main(argv)
    out = capsys.readouterr().out
    status = {(r["variant"], r["seed"]): r["status"] for r in second}
    assert status == {("era", 1): "skipped", ("era", 2): "skipped", ("baseline", 1): "skipped",
                      ("baseline", 2): "failed (exit 3)"}
    for d, mtime in done.items():  # finished runs untouched: same marker, one attempt in the log
        assert (d / "DONE").stat().st_mtime_ns == mtime
        assert (d / "log.txt").read_text().count("\n### ") == 1
    failed = [r for r in second if r["status"].startswith("failed")][0]
    cmd = json.loads((failed["dir"] / "run.json").read_text())["cmd"]
    assert cmd[-2] == "--resume" and cmd[-1].endswith("checkpoint.pt") and Path(cmd[-1]).is_file()
    assert failed["log"].read_text().count("\n### ") == 2
    assert f"FAILED baseline seed 2: failed (exit 3); see {failed['log']}" in out
    with pytest.raises(ValueError, match="different flags"):  # same group, other flags: refuse to mix
        run.main(argv[:-2])


def test_runner_dry_run_timeout_and_bad_input(tmp_path, capsys):
    script = tmp_path / "fake_script.py"
    script.write_text(FAKE_SCRIPT)
    base = ["--script", str(script), "--out", str(tmp_path / "out"), "--seeds", "7"]
    res = run.main(base + ["--dry-run", "--group", "g"])
    assert [r["status"] for r in res] == ["dry-run", "dry-run"] and not (tmp_path / "out").exists()
    assert "--seed 7 --runs-dir" in capsys.readouterr().out
    res = run.main(base + ["--variants", "era", "--timeout", "2", "--", "--sleep", "60"])
    assert [r["status"] for r in res] == ["timeout"]
    assert (tmp_path / "out/fake_script/default/era/seed7/runs/interrupted").exists()  # got SIGTERM, not a kill
    for bad, match in [(["--workers", "0"], "--workers"), (["--", "--seed", "3"], "set by the runner"),
                       (["--", "--runs-dir=x"], "set by the runner"), (["--timeout", "0"], "--timeout"), (["--grace", "0"], "--grace")]:
        with pytest.raises(ValueError, match=match):
            run.main(base + bad)
    with pytest.raises(ValueError, match="no such file"):
        run.main(["--script", str(tmp_path / "missing.py")])


def test_runner_sigterm_interrupts_scripts(tmp_path):
    """`kill <runner>` (or Ctrl-C) passes one SIGINT to each script, waits for it, marks nothing DONE."""
    script = tmp_path / "fake_script.py"
    script.write_text(FAKE_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "run.py"), "--script", str(script),
                             "--seeds", "1", "2", "3", "--workers", "2", "--out", str(tmp_path / "out"), "--",
                             "--sleep", "60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs = [tmp_path / f"out/fake_script/default/era/seed{k}/log.txt" for k in (1, 2)]
    deadline = time.time() + 30
    while not all(p.exists() and "fake script argv" in p.read_text() for p in logs) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted: run the same command again" in out
    assert all((p.parent / "runs" / "interrupted").exists() for p in logs)  # both scripts got SIGINT
    assert not list((tmp_path / "out").rglob("DONE"))
    assert not (tmp_path / "out/fake_script/default/era/seed3").exists()  # never started


def stats(xs):
    return statistics.mean(xs), statistics.stdev(xs)


def test_plot_on_runner_output(runner_out, capsys):
    tmp, _, _ = runner_out
    png = tmp / "plot" / "p.png"
    rows = plot.main([str(tmp / "out"), "--out", str(png)])
    assert len(rows) == 1 and rows[0]["panel"] == "dm_control/cheetah-run-v0" and rows[0]["step"] == 400
    era = [2.0 * 4 + 0.25 * s for s in (1, 2)]  # the fake script's last value: (1 + era) * 4 + seed / 4
    base = [1.0 * 4 + 0.25 * s for s in (1, 2)]
    assert (rows[0]["era"]["mean"], rows[0]["era"]["std"]) == stats(era)
    assert (rows[0]["baseline"]["mean"], rows[0]["baseline"]["std"]) == stats(base)
    assert rows[0]["baseline"]["unfinished"] == 1  # seed 2 has no DONE
    assert rows[0]["ratio"] == statistics.mean(era) / statistics.mean(base)
    table = (tmp / "plot" / "p.md").read_text()
    assert "| dm_control/cheetah-run-v0 | 400 | 8.375 ± 0.1768 | 2 | 4.375 ± 0.1768 | 2 (1 unfinished) | 1.914 |" \
        in table
    assert table in capsys.readouterr().out


def write_run(root, name, steps, values, hparams=None):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(root / name))
    if hparams:
        w.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in hparams.items()))
    for s, v in zip(steps, values):
        w.add_scalar("eval/episodic_return", v, s)
        w.add_scalar("charts/SPS", 1.0, s)
    w.close()


def test_plot_on_runs_dir_table_matches_events(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = {}  # (env, variant, seed) -> {step: value}, as float32 like tensorboard stores them
    for env, hp_text in [("HalfCheetah-v5", False), ("dm_control/walker-walk-v0", True)]:
        for variant in ("era", "baseline"):
            for seed in (1, 2, 3, 4):
                steps = list(range(0, 1000 + 100 * seed, 50 * seed))  # different grids and lengths
                values = rng.normal(100, 30, len(steps)).astype(np.float32)
                # without hp_text the variant is read from the run name, with it from the hyperparameters
                suffix = "_noera" if variant == "baseline" and not hp_text else ""
                name = f"{env}__ppo_era{suffix}__{seed}__{17 + (variant == 'era')}"
                hp = {"env_id": env, "era": variant == "era", "seed": seed} if hp_text else None
                write_run(tmp_path / "runs", name, steps, values, hp)
                data[env, variant, seed] = dict(zip(steps, values.tolist()))
    # a resumed run logs step 900 again in a second event file: the later value counts
    write_run(tmp_path / "runs", "HalfCheetah-v5__ppo_era__1__18", [900], [np.float32(-5.0)])
    data["HalfCheetah-v5", "era", 1][900] = -5.0
    png = tmp_path / "fig.png"
    rows = plot.main([str(tmp_path / "runs"), "--out", str(png), "--last", "2"])
    table = png.with_suffix(".md").read_text()
    assert table in capsys.readouterr().out
    assert [r["panel"] for r in rows] == ["HalfCheetah-v5", "dm_control/walker-walk-v0"]
    for row, env in zip(rows, ["HalfCheetah-v5", "dm_control/walker-walk-v0"]):
        end = min(max(data[env, v, s]) for v in ("era", "baseline") for s in (1, 2, 3, 4))
        assert row["step"] == end == 1050  # the last step all runs reached, not every run's last step
        means = {}
        for variant in ("era", "baseline"):
            finals = []
            for seed in (1, 2, 3, 4):
                logged = [data[env, variant, seed][s] for s in sorted(data[env, variant, seed]) if s <= end]
                finals.append(statistics.mean(logged[-2:]))
            mean, std = stats(finals)
            assert row[variant]["mean"] == pytest.approx(mean, rel=1e-12)
            assert row[variant]["std"] == pytest.approx(std, rel=1e-12)
            assert row[variant]["n"] == 4 and row[variant]["unfinished"] == 0
            assert f"{plot.fmt(row[variant]['mean'])} ± {plot.fmt(row[variant]['std'])} | 4 |" in table
            means[variant] = mean
            # at step 0, logged by every seed, the curve is the plain mean over seeds
            grid, centre, low, high = row["curves"][variant]
            at0 = [data[env, variant, s][0] for s in (1, 2, 3, 4)]
            assert grid[0] == 0 and centre[0] == pytest.approx(statistics.mean(at0), rel=1e-12)
            assert high[0] - centre[0] == pytest.approx(statistics.stdev(at0), rel=1e-12)
        assert row["ratio"] == pytest.approx(means["era"] / means["baseline"], rel=1e-12)
        assert f"| {row['panel']} | {end} |" in table and f"| {means['era'] / means['baseline']:.3f} |" in table
    img = Image.open(png)
    assert img.format == "PNG" and img.size[0] >= 1000 and img.size[1] >= 300
    assert png.stat().st_size > 20_000 and np.asarray(img.convert("L")).std() > 10  # not a blank canvas

    rows = plot.main([str(tmp_path / "runs"), "--out", str(tmp_path / "iqm.png"), "--iqm"])
    grid, centre, low, high = rows[0]["curves"]["era"]
    at0 = sorted(data["HalfCheetah-v5", "era", s][0] for s in (1, 2, 3, 4))
    assert centre[0] == pytest.approx((at0[1] + at0[2]) / 2, rel=1e-12)  # IQM of 4 = mean of the middle 2
    assert (low[0], high[0]) == tuple(np.percentile(at0, [25, 75]))


def test_plot_bad_input(tmp_path):
    write_run(tmp_path / "runs", "Env-v0__x__1__1", [0, 1], [1.0, 2.0])
    with pytest.raises(ValueError, match="no runs with scalar tag 'nope'"):
        plot.main([str(tmp_path / "runs"), "--tag", "nope", "--out", str(tmp_path / "p.png")])
    with pytest.raises(ValueError, match="--last"):
        plot.main([str(tmp_path / "runs"), "--last", "0"])
    with pytest.raises(ValueError, match="no such directory"):
        plot.main([str(tmp_path / "missing")])


def write_runpy_run(out, group, variant, seed, tags, wall_s=None, attempts=1, script="ppo_era.py", label=None):
    """A run as benchmarks/run.py leaves it: run.json, log.txt (one '### ' line per attempt), DONE, runs/<name>/."""
    from torch.utils.tensorboard import SummaryWriter

    d = out / Path(script).stem / group.replace("/", "_") / variant / f"seed{seed}"
    (d / "runs").mkdir(parents=True)
    meta = dict(script=script, variant=variant, seed=seed, group=group.replace("/", "_"), label=label or group, extra=[])
    (d / "run.json").write_text(json.dumps(meta))
    (d / "log.txt").write_text("".join(f"\n### 2026-01-01 00:00:0{k} $ python {script}\n" for k in range(attempts)))
    if wall_s is not None:
        (d / "DONE").write_text(json.dumps({"returncode": 0, "wall_s": wall_s, "finished": "then"}))
    w = SummaryWriter(str(d / "runs" / f"{group.replace('/', '_')}__x__{seed}__1"))
    for tag, (steps, values) in tags.items():
        for s, v in zip(steps, values):
            w.add_scalar(tag, v, s)
    w.close()


def test_plot_chosen_curves_two_tags(tmp_path, capsys):
    """The issue-11 figure: per env, PPO / PPO init σ / ERA pin / ERA floor from four run.py groups and variants,
    return and entropy side by side, and a table of finals (mean ± std over seeds), n and wall time per run."""
    rng = np.random.default_rng(1)
    curves = {"PPO": ("{env}", "baseline"), "PPO init σ": ("{env}-init", "baseline"),
              "ERA pin": ("{env}", "era"), "ERA floor": ("{env}-floor", "era")}
    data, walls = {}, {}
    for env in ("Hopper-v5", "HalfCheetah-v5"):
        for label, (group, variant) in curves.items():
            for seed in (1, 2, 3):
                ret = (np.arange(0, 1100, 100), rng.normal(1000, 200, 11).astype(np.float32))
                ent = (np.arange(0, 1100 + 50 * seed, 50), rng.normal(0, 1, 22 + seed).astype(np.float32))
                wall = None if (env, label, seed) == ("Hopper-v5", "ERA floor", 3) else 3600.0 * seed
                resumed = (env, label, seed) == ("HalfCheetah-v5", "PPO", 2)
                write_runpy_run(tmp_path / "res", group.format(env=env), variant, seed,
                                {"eval/episodic_return": ret, "losses/entropy": ent}, wall, 2 if resumed else 1)
                data[env, label, seed] = {"eval/episodic_return": ret, "losses/entropy": ent}
                walls[env, label, seed] = wall
    # another script's runs and an unrelated group under the same root are left out of the figure
    write_runpy_run(tmp_path / "res", "Hopper-v5-other", "era", 1, {"eval/episodic_return": ([0, 1], [0.0, 1.0])}, 1.0)
    png = tmp_path / "fig" / "ppo.png"
    rows = plot.main([str(tmp_path / "res"), "--env", "Hopper-v5", "HalfCheetah-v5",
                      "--curve", *[f"{label}={g}/{v}" for label, (g, v) in curves.items()],
                      "--tag", "eval/episodic_return", "losses/entropy", "--out", str(png)])
    table = png.with_suffix(".md").read_text()
    assert table in capsys.readouterr().out
    assert [r["env"] for r in rows] == ["Hopper-v5", "HalfCheetah-v5"]
    for row in rows:
        env = row["env"]
        assert row["labels"] == list(curves)
        ends = {"eval/episodic_return": 1000, "losses/entropy": 1100}  # entropy: the shortest run (seed 1) ends there
        for tag, end in ends.items():
            for label in curves:
                got = row["tags"][tag][label]
                want = [float(np.asarray(data[env, label, s][tag][1])[np.asarray(data[env, label, s][tag][0]) <= end][-1])
                        for s in (1, 2, 3)]
                assert got["step"] == end and got["n"] == 3
                assert (got["mean"], got["std"]) == pytest.approx(stats(want), rel=1e-12)
                assert f"{plot.fmt(got['mean'])} ± {plot.fmt(got['std'])} | {end}" in table
        for label in curves:
            done = [walls[env, label, s] / 3600 for s in (1, 2, 3) if walls[env, label, s] is not None]
            star = "*" if (env, label) == ("HalfCheetah-v5", "PPO") else ""
            assert row["wall"][label].startswith(f"{np.mean(done):.2f}{star} ({min(done):.2f}–{max(done):.2f})")
            assert row["unfinished"][label] == (1 if (env, label) == ("Hopper-v5", "ERA floor") else 0)
    assert "| Hopper-v5 | ERA floor | 3 (1 unfinished) |" in table and "| HalfCheetah-v5 | PPO | 3 | " in table
    assert "| 2.00* (1.00–3.00) |" in table and "| 1.50 (1.00–2.00) |" in table
    img = Image.open(png)  # 2 envs x 2 tags
    assert img.size[0] >= 1200 and img.size[1] >= 800 and np.asarray(img.convert("L")).std() > 10

    # without --env the panel is named after the curves' groups
    rows = plot.main([str(tmp_path / "res"), "--curve", "PPO=Hopper-v5/baseline", "ERA=Hopper-v5-floor/era",
                      "--out", str(tmp_path / "noenv.png")])
    assert [r["env"] for r in rows] == ["Hopper-v5, Hopper-v5-floor"]

    for bad, match in [(["--curve", "PPO={env}/baseline"], "name the envs with --env"),
                       (["--env", "Hopper-v5"], "--env needs --curve"),
                       (["--curve", "PPO=Hopper-v5"], "expected LABEL=GROUP/VARIANT"),
                       (["--curve", "PPO=Walker2d-v5/baseline"], r"no such runs \(found: HalfCheetah-v5-floor/era")]:
        with pytest.raises(ValueError, match=match):
            plot.main([str(tmp_path / "res"), "--out", str(tmp_path / "bad.png"), *bad])
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "plot.py"), str(tmp_path / "res"), "--curve",
                           "PPO=Walker2d-v5/baseline", "--out", str(tmp_path / "bad.png")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --curve PPO=Walker2d-v5/baseline: no such runs")
    assert len(proc.stderr.strip().splitlines()) == 1  # the command line gets the message alone, no traceback


def test_bench_speed_table_through_the_cli(capsys):
    """benchmarks/bench_speed.py: both budgets of every variant run through resnet_era.py's command line and the
    Markdown table has one row per script (a 64-image subset here: the figures are noise at that size, only their
    presence is checked), the same with ERA and --no-era run side by side (--paired), and bad --scripts / --extra
    values are one clear error."""
    speed = load("bench_speed")
    costs = speed.main(["--scripts", "resnet", "--no-compile", "--extra", "resnet=--train-subset 64 --test-subset 32"])
    out = capsys.readouterr().out
    assert "| script | unit | ERA | --no-era | --no-era / ERA |" in out
    assert [line.split(" | ")[0] for line in out.splitlines() if line.startswith("| resnet")] == ["| resnet_era.py"]
    assert set(costs) == {("resnet", "ERA"), ("resnet", "--no-era")} and all(map(np.isfinite, costs.values()))
    paired = speed.main(["--scripts", "resnet", "--no-compile", "--paired", "--extra", "resnet=--train-subset 64 --test-subset 32"])
    assert "ERA and --no-era paired (at the same time, one per core)" in capsys.readouterr().out
    assert set(paired) == set(costs) and all(map(np.isfinite, paired.values()))
    with pytest.raises(SystemExit, match="--paired runs two variants at once on two CPU cores: not with --cuda"):
        speed.main(["--paired", "--cuda"])
    with pytest.raises(SystemExit, match="--scripts must be among"):
        speed.main(["--scripts", "sack"])
    with pytest.raises(SystemExit, match="--extra 'x=--seed 2': SCRIPT must be one of"):
        speed.main(["--extra", "x=--seed 2"])
