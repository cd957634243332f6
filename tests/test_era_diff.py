"""The ERA diff is literal: `grep -v "# ERA" X_era.py > X.py` is the baseline, and it logs what `--no-era` logs.

For each of the five scripts: the stripped file parses and is pyflakes-clean (so no tagged line also served the
baseline), and, run with the same seed and flags at a tiny budget, it logs bit for bit the same scalars as
`X_era.py --no-era` (timing tags aside). Both runs go through the command line, on CPU, one thread.
"""
import ast

import pytest
from pyflakes.api import check
from pyflakes.reporter import Reporter

from conftest import ROOT, SCRIPTS, assert_same_scalars, only_run_dir, run_script, scalars, strip_era

# A real but tiny run of each script: a few updates of everything the baseline logs (losses, episodes, eval).
TINY = {
    "sac_era.py": ["--env-id", "dm_control/cartpole-balance-v0", "--total-timesteps", "1200", "--learning-starts",
                   "100", "--batch-size", "16", "--hidden-dim", "16", "--utd-ratio", "1", "--log-every", "50",
                   "--eval-every", "1000", "--eval-episodes", "1", "--save-every", "0"],
    "ppo_era.py": ["--env-id", "Hopper-v5", "--num-envs", "2", "--num-steps", "64", "--num-minibatches", "4",
                   "--update-epochs", "2", "--total-timesteps", "256", "--eval-every", "256", "--eval-episodes", "1",
                   "--save-every", "0", "--log-every", "128"],
    "tdmpc2_era.py": ["--env-id", "dm_control/cartpole-balance-v0", "--model-size", "1", "--latent-dim", "16",
                      "--mlp-dim", "16", "--num-samples", "32", "--num-elites", "4",
                      "--num-pi-trajs", "4", "--iterations", "2", "--batch-size", "8", "--episode-length", "20",
                      "--seed-steps", "20", "--total-timesteps", "60", "--eval-every", "40", "--eval-episodes", "1",
                      "--log-every", "5", "--save-every", "0"],
    "resnet_era.py": ["--dataset", "digits", "--arch", "resnet8", "--epochs", "2", "--batch-size", "16",
                      "--train-subset", "48", "--test-subset", "32", "--num-workers", "0", "--dropout", "0.1",
                      "--augmentation", "randaugment"],
    "grpo_era.py": ["--model-name", "tiny", "--dataset", "parity", "--total-steps", "2", "--batch-size", "16",
                    "--num-generations", "4", "--learning-rate", "3e-3", "--save-every", "0"],
}


class Collect:
    def __init__(self):
        self.messages = []

    def write(self, text):
        self.messages.append(text)

    def flush(self):
        pass


def pyflakes_messages(path):
    out = Collect()
    check(path.read_text(), str(path), Reporter(out, out))
    return "".join(out.messages).strip()


def test_every_script_has_a_tiny_configuration():
    assert sorted(TINY) == sorted(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_stripped_file_parses_and_is_pyflakes_clean(script, tmp_path):
    assert pyflakes_messages(ROOT / script) == "", f"{script} itself is not pyflakes-clean"
    baseline = strip_era(script, tmp_path)
    ast.parse(baseline.read_text(), str(baseline))
    assert pyflakes_messages(baseline) == ""
    tagged = [line for line in (ROOT / script).read_text().splitlines() if "# ERA" in line]
    assert tagged, f"{script} has no ERA lines"
    assert not any("# ERA off" in line for line in tagged), "a baseline line must not carry the ERA tag"


@pytest.mark.parametrize("script", SCRIPTS)
def test_stripped_baseline_logs_what_no_era_logs(script, tmp_path):
    baseline = strip_era(script, tmp_path)
    era_run = run_script(script, *TINY[script], "--seed", "3", "--runs-dir", tmp_path / "era", "--no-era")
    assert era_run.returncode == 0, era_run.stderr[-3000:]
    base_run = run_script(baseline, *TINY[script], "--seed", "3", "--runs-dir", tmp_path / "base", cwd=tmp_path)
    assert base_run.returncode == 0, base_run.stderr[-3000:]
    logged = scalars(only_run_dir(tmp_path / "era"))
    assert any(tag.startswith("losses/") or tag.startswith("train/") for tag in logged), sorted(logged)
    assert_same_scalars(logged, scalars(only_run_dir(tmp_path / "base")))
