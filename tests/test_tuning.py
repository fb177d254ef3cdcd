"""The Optuna tuner: knob suggestions, parallel workers on one journal, resume, pruning, several
objectives, and a killed worker's trial retried through a real PostgreSQL server."""
from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from PIL import Image
from torch import nn

from click.testing import CliRunner

from nasseg.cli import cli
from nasseg.searches.tuning import (TuneConfig, counted_trials, knob_distribution, knob_order,
                                    open_storage, run_study, suggest_knobs, tunable_knobs,
                                    write_results)
from nasseg.space import KnobError, SearchSpace, fixed_knobs
from nasseg.space.knobs import check_knob_value
from nasseg.spaces.unet import UNetSpace
from test_method_contract import PixelAccuracy

TINY = {"features": 2, "levels": 2}
SHORT = {"search_steps": 2, "train_steps": 2}  # steps per epoch of a smoke trial
TINY_ARGS = ["--space", "unet", "--space-arg", "features=2", "--space-arg", "levels=2",
             "--search-epochs", "1", "--train-epochs", "1", "--search-steps", "2",
             "--train-steps", "2", "--device", "cpu"]


class _KnobSpace(SearchSpace):
    """Only knobs: a categorical, a log-scaled float, an integer and a list-valued categorical."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.mode = self.knob("mode", ["sum", "max", True])
        self.weight = self.knob("dice_weight", low=1e-3, high=1.0, log=True)
        self.depth = self.knob("depth", low=1, high=4, integer=True)
        self.kernel = self.knob("kernel", [[3, 3], [5]])
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return self.conv(x)


def _config(out: Path, data: Path, trials: int, **kwargs) -> TuneConfig:
    return TuneConfig(out=out, trials=trials, space="unet", data=str(data), space_args=TINY,
                      search_epochs=1, train_epochs=1, device="cpu", **{**SHORT, **kwargs})


def _journal_study(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(None, out).storage)


def _tune_command() -> list[str]:
    """``python -m nasseg.cli tune`` once the verb is registered, else the command itself."""
    from nasseg.cli import cli

    if "tune" in cli.commands:
        return [sys.executable, "-m", "nasseg.cli", "tune"]
    return [sys.executable, "-c", "from nasseg.cli.tune import tune; tune()"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# ----- suggestions ------------------------------------------------------------------------------
def test_every_knob_kind_maps_to_its_suggestion():
    space = _KnobSpace()
    dists = {label: knob_distribution(label, m) for label, m in space.knob_specs.items()}
    assert dists["mode"] == CategoricalDistribution(["sum", "max", True])
    assert dists["dice_weight"] == FloatDistribution(1e-3, 1.0, log=True)
    assert dists["depth"] == IntDistribution(1, 4, log=False)
    assert dists["kernel"] == CategoricalDistribution(["[3, 3]", "[5]"])  # JSON text

    assert set(tunable_knobs(space.knob_specs, fixed={"depth": 2})) == {"mode", "dice_weight",
                                                                         "kernel"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        values = suggest_knobs(trial, space.knob_specs)
        assert trial.distributions == dists
        for label, value in values.items():
            assert check_knob_value(space.knob_specs[label], value) == value
        assert isinstance(values["depth"], int) and isinstance(values["kernel"], list)
        assert 1e-3 <= values["dice_weight"] <= 1.0
        with fixed_knobs(values):  # the suggestions build the space
            assert _KnobSpace().knob_values == values
        seen.add(values["mode"])
        study.tell(trial, 0.0)
    assert seen == {"sum", "max", True}


class _VariantSpace(SearchSpace):
    """A categorical ``variant`` and a ``beta`` that only variants b and c read."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.variant = self.knob("variant", ["a", "b", "c"])
        self.beta = self.knob("beta", low=0.1, high=1.0, default=0.5,
                              active_if={"variant": ["b", "c"]})
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return self.conv(x)


def test_a_conditional_knob_is_suggested_only_while_it_applies(tmp_path):
    assert _VariantSpace().knob_conditions == {"beta": {"variant": ["b", "c"]}}
    with fixed_knobs({"variant": "a", "beta": 0.9}):
        assert _VariantSpace().knob_values == {"variant": "a", "beta": 0.5}  # inactive: default
    with fixed_knobs({"variant": "c", "beta": 0.9}):
        assert _VariantSpace().knob_values == {"variant": "c", "beta": 0.9}
    assert knob_order(["beta", "variant", "alpha"], {"beta": {"variant": ["b"]}}) == \
        ["alpha", "variant", "beta"]  # a condition's knob first
    for bad, match in (({"mode": ["x"]}, "not a knob declared before it"),
                       ({"variant": ["z"]}, "takes one of"), ({"variant": "b"}, "list")):
        space = SearchSpace()
        space.knob("variant", ["a", "b"])
        with pytest.raises(KnobError, match=match):
            space.knob("beta", low=0.1, high=1.0, active_if=bad)

    space = _VariantSpace()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        trial = study.ask()
        values = suggest_knobs(trial, space.knob_specs, space.knob_conditions)
        active = values["variant"] in ("b", "c")
        assert ("beta" in values) == ("beta" in trial.params) == active
        assert trial.user_attrs.get("inactive_knobs", []) == ([] if active else ["beta"])
        study.tell(trial, 0.5)
    variants = [t.params["variant"] for t in study.trials]
    assert {"a", "b"} <= set(variants)

    write_results(study, tmp_path, open_storage(None, tmp_path), ["dice"])
    with open(tmp_path / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["knob:beta"] == "inactive" for r in rows] == [v == "a" for v in variants]
    assert all(float(r["knob:beta"]) > 0 for r in rows if r["knob:variant"] != "a")

    shown = CliRunner().invoke(cli, ["spaces", f"{__name__}:_VariantSpace"])
    assert shown.exit_code == 0, shown.output
    assert "'active_if': {'variant': ['b', 'c']}" in shown.output


# ----- workers, resume, pruning, objectives -------------------------------------------------------
_BARRIER_WORKER = """
import os, sys, time
from nasseg.cli import cli
from nasseg.cli.tune import tune
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
if "tune" in cli.commands:
    cli(["tune", *sys.argv[2:]], prog_name="nasseg")
tune(sys.argv[2:], prog_name="nasseg tune")
"""


def test_two_worker_processes_share_one_journal(tmp_path, small3d):
    """Two processes on one journal file run exactly N trials together: none lost, none twice."""
    n = 6
    go = tmp_path / "go"
    # no pruner: every trial must complete, so a lost or doubled trial shows in the states
    args = [*TINY_ARGS, "--data", str(small3d), "--trials", str(n), "--out", "study",
            "--pruner", "none"]
    workers = [subprocess.Popen([sys.executable, "-c", _BARRIER_WORKER, str(go), *args],
                                cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    time.sleep(0.5)
    go.touch()  # both start their loops together, imports done
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    study = _journal_study(tmp_path / "study", "study")
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(n))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    folders = [t.user_attrs["trial_dir"] for t in trials]
    assert len(set(folders)) == n and all((Path(f) / "train" / "metrics.json").is_file()
                                          for f in folders)
    assert study.user_attrs["nasseg_workers"] == 2
    ran = [int(out.rsplit("this worker ran ", 1)[1].split()[0]) for out in outputs]
    assert sum(ran) == n and min(ran) >= 1, outputs  # both worked, no trial twice

    rows = json.loads((tmp_path / "study" / "trials.json").read_text())
    assert sorted(r["trial"] for r in rows) == list(range(n))
    best = json.loads((tmp_path / "study" / "best.json").read_text())
    assert best["best"]["trial"] in range(n) and (tmp_path / "study" / "best_arch.json").is_file()
    assert (tmp_path / "study" / "trials.csv").read_text().count("\n") == n + 1
    assert all(f"pictures: {Path('study') / 'history.png'}" in out for out in outputs)


def test_killed_worker_trial_is_retried_on_the_journal(tmp_path, small3d):
    """Two workers on the default journal; one is killed mid-trial: the other fails that trial,
    runs its knobs again, and the study still ends with --trials finished trials."""
    n = 3
    args = [*TINY_ARGS, "--data", str(small3d), "--trials", str(n), "--train-epochs", "8",
            "--pruner", "none", "--out", "study"]
    victim, survivor = [subprocess.Popen([*_tune_command(), *args], cwd=tmp_path, env=_env(),
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True) for _ in range(2)]
    journal = tmp_path / "study" / "study.journal"
    deadline = time.monotonic() + 120
    mid_trial = False
    while not mid_trial and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        if journal.exists():
            try:
                study = _journal_study(tmp_path / "study", "study")
            except KeyError:  # the workers create the file before they record the study in it
                continue
            running = study.get_trials(states=(TrialState.RUNNING,))
            mid_trial = any(t.user_attrs.get("worker", {}).get("pid") == victim.pid and
                            (Path(t.user_attrs.get("trial_dir", "-")) / "train" / "run.json"
                             ).exists() for t in running)
    assert mid_trial and victim.poll() is None, "the victim never reached a retrain"
    victim.send_signal(signal.SIGKILL)  # no chance to tell the study anything
    victim.communicate(timeout=30)
    out = survivor.communicate(timeout=300)[0]
    assert survivor.returncode == 0, out

    trials = _journal_study(tmp_path / "study", "study").get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["worker"]["pid"] == victim.pid
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n == counted_trials(trials) == len(trials) - 1
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number)
    assert retry.state == TrialState.COMPLETE and retry.params == failed[0].params
    assert retry.user_attrs["retry_of"] == failed[0].number and retry.user_attrs["retry"] == 1
    assert retry.user_attrs["worker"]["pid"] == survivor.pid
    assert f"retry of trial {failed[0].number}" in out
    rows = json.loads((tmp_path / "study" / "trials.json").read_text())
    assert [r["retry_of"] for r in rows if "retry_of" in r] == [failed[0].number]


def test_study_resumes_under_the_same_name(tmp_path, small3d):
    out = tmp_path / "tune"
    first = run_study(_config(out, small3d, 2, study_name="resumable", seed=5))
    assert first.trials_run == 2
    second = run_study(_config(out, small3d, 3, study_name="resumable", seed=5))
    assert second.trials_run == 1  # --trials is the study's size: it continues to 3
    trials = second.study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert set(trials[0].params) == {"upsample", "gate_reg"}
    assert sorted(p.name for p in out.glob("trial-*")) == ["trial-0000", "trial-0001",
                                                           "trial-0002"]
    again = run_study(_config(out, small3d, 3, study_name="resumable", seed=5))
    assert again.trials_run == 0 and len(again.study.get_trials()) == 3

    best = json.loads((out / "best.json").read_text())
    assert best["study"] == "resumable" and best["trials"] == 3
    arch = json.loads((out / "best_arch.json").read_text())
    assert arch["sample"]["upsample"] == best["best"]["knobs"]["upsample"]
    assert arch["params"] == best["best"]["params"]

    with pytest.raises(ValueError, match="other settings.*train_epochs"):
        run_study(TuneConfig(out=out, trials=4, space="unet", data=str(small3d), space_args=TINY,
                             search_epochs=1, train_epochs=2, device="cpu",
                             study_name="resumable", **SHORT))
    with pytest.raises(ValueError, match="other settings.*search_steps: study 2, now 16"):
        run_study(_config(out, small3d, 4, study_name="resumable", seed=5, search_steps=16))


def test_a_pruner_that_prunes_stops_trials(tmp_path, small3d):
    """Dice is reported every epoch; a pruner that finds it too low stops the trial there."""
    out = tmp_path / "pruned"
    result = run_study(_config(out, small3d, 2, pruner=optuna.pruners.ThresholdPruner(lower=1.5),
                               fixed_knobs={"upsample": "interp"}))
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [0] for t in trials)  # the first search epoch
    assert all("upsample" not in t.params for t in trials)  # fixed, not tuned
    assert not (out / "trial-0000" / "train").exists()
    assert result.best["best"] is None and not (out / "best_arch.json").exists()
    assert [r["pruned_at_step"] for r in result.rows] == [0, 0]


def test_retrain_only_trials_and_two_objectives(tmp_path, small3d):
    searched = run_study(_config(tmp_path / "search", small3d, 1, pruner="none"))
    arch = tmp_path / "search" / "best_arch.json"
    assert searched.best["best"]["best_arch"] == str(arch.resolve())

    latency = run_study(TuneConfig(out=tmp_path / "latency", trials=2, arch=arch, train_epochs=2,
                                   train_steps=2, device="cpu", objectives=("dice", "latency"),
                                   sampler="nsga2"))
    trials = latency.study.get_trials()
    assert latency.study.directions == [optuna.study.StudyDirection.MAXIMIZE,
                                        optuna.study.StudyDirection.MINIMIZE]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all(set(t.params) == {"upsample"} for t in trials)  # gate_reg steers searches only
    assert all(t.values[1] == t.user_attrs["latency_ms"] > 0 for t in trials)
    assert all(Path(t.user_attrs["arch"]).parent == Path(t.user_attrs["trial_dir"])
               for t in trials)
    pareto = latency.best["pareto"]
    assert pareto and {e["trial"] for e in pareto} <= {0, 1}
    for name in ("history", "pareto"):  # drawn by optuna.visualization.matplotlib
        path = latency.files[name]
        assert path == tmp_path / "latency" / f"{name}.png" and path.stat().st_size > 0
        with Image.open(path) as image:
            assert image.format == "PNG"
    varied = len({t.params["upsample"] for t in trials}) > 1
    assert ("importances" in latency.files) == varied  # needs knobs that differ
    assert not [p for p in (tmp_path / "latency").iterdir() if p.name.startswith(".")
                and p.suffix == ".png"]  # no temp files left

    params = run_study(TuneConfig(out=tmp_path / "params", trials=2, arch=arch, train_epochs=1,
                                  train_steps=2, device="cpu", objectives=("dice", "params"),
                                  seed=1))
    for t in params.study.get_trials():
        derived = json.loads(Path(t.user_attrs["arch"]).read_text())
        assert derived["sample"]["upsample"] == t.params["upsample"]
        assert t.values[1] == derived["params"] == t.user_attrs["params"]


class _AccUNet(UNetSpace):
    """The U-Net with a metric of its own, which it selects its best epoch by."""

    selection_metric = "pixel_acc"

    def metrics(self):
        return [PixelAccuracy()]


def test_a_space_metric_is_the_objective(tmp_path, small3d):
    space = f"{__name__}:_AccUNet"
    with pytest.raises(ValueError, match="'miou' is not a validation value.*choose from dice, "
                                         "dice_mean, pixel_acc"):
        run_study(TuneConfig(out=tmp_path / "bad", trials=1, space=space, data=str(small3d),
                             space_args=TINY, objectives=("miou",)))
    with pytest.raises(ValueError, match="optionally followed by params or latency"):
        TuneConfig(out=tmp_path / "bad", trials=1, space=space, objectives=("params", "dice"))

    result = run_study(TuneConfig(out=tmp_path / "acc", trials=2, space=space, data=str(small3d),
                                  space_args=TINY, search_epochs=1, train_epochs=2,
                                  device="cpu", pruner="none", objectives=("pixel_acc",),
                                  **SHORT))
    assert result.best["objectives"] == ["pixel_acc"]
    assert result.best["directions"] == ["maximize"]
    for t in result.study.get_trials():
        metrics = json.loads((Path(t.user_attrs["trial_dir"]) / "train" / "metrics.json"
                              ).read_text())
        assert metrics["selection_metric"] == "pixel_acc"
        assert t.value == metrics["validation"]["pixel_acc"] == t.user_attrs["pixel_acc"]
        assert t.user_attrs["dice"] == metrics["dice_mean"]
        assert len(t.intermediate_values) == 3  # the selection metric, every epoch
    assert result.best["best"]["values"]["pixel_acc"] == max(t.value for t in
                                                             result.study.get_trials())


def test_counted_trials_replaces_retried_failures():
    def frozen(number, state, retry=None):
        return optuna.trial.create_trial(
            state=state, value=0.5 if state == TrialState.COMPLETE else None,
            system_attrs={} if retry is None else {"failed_trial": retry[0],
                                                   "retry_history": retry})

    trials = [frozen(0, TrialState.FAIL), frozen(1, TrialState.COMPLETE),
              frozen(2, TrialState.WAITING, [0])]
    for number, t in enumerate(trials):
        t.number = number
    assert counted_trials(trials) == 2  # trial 2 runs in place of trial 0
    assert counted_trials(trials[:2]) == 2  # a failure nobody retries still counts


# ----- PostgreSQL: a killed worker's trial is retried ---------------------------------------------
def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on a free localhost port (as a non-root user)."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install "
                                           "'nasseg[postgres]')")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install "
                    "postgresql")
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:  # postgres refuses to run as root
        import pwd

        runuser = shutil.which("runuser")
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            owner = None
        if not (runuser and owner):
            pytest.skip("running as root without a 'postgres' user and runuser to start "
                        "PostgreSQL as")
        prefix = [runuser, "-u", "postgres", "--"]
    # Below /tmp, not pytest's tmp_path (mode 0700, closed to the postgres user).
    root = Path(tempfile.mkdtemp(prefix="nasseg-pg-"))
    data = root / "data"
    data.mkdir()
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
        os.chown(data, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    try:
        subprocess.run([*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=60)
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-w",
                        "-t", "30", "-o",
                        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                        "start"], check=True, capture_output=True, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc}\n{getattr(exc, 'stderr', '')}\n{log}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_killed_worker_trial_is_retried_on_postgres(tmp_path, small3d, postgres_url):
    args = [*TINY_ARGS, "--data", str(small3d), "--trials", "1", "--train-epochs", "30",
            "--storage", postgres_url, "--study", "shared", "--heartbeat", "1",
            "--grace-period", "2"]
    victim = subprocess.Popen([*_tune_command(), *args, "--out", "machine-a"], cwd=tmp_path,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    training = tmp_path / "machine-a" / "trial-0000" / "train" / "run.json"
    deadline = time.monotonic() + 60
    while not training.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert victim.poll() is None, victim.communicate()[0]
    assert training.exists(), "the first worker never reached its retrain"
    victim.send_signal(signal.SIGKILL)  # mid-trial: no chance to tell the study anything
    victim.communicate(timeout=30)

    study = optuna.load_study(study_name="shared",
                              storage=open_storage(postgres_url, tmp_path).storage)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]

    rescuer = subprocess.run([*_tune_command(), *args, "--out", "machine-b"], cwd=tmp_path,
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=120)
    assert rescuer.returncode == 0, rescuer.stdout
    trials = study.get_trials()
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.FAIL),
                                                     (1, TrialState.COMPLETE)]
    retry = trials[1]
    assert retry.system_attrs["failed_trial"] == 0
    assert retry.params == trials[0].params  # the same knobs, run again
    assert Path(retry.user_attrs["trial_dir"]) == (tmp_path / "machine-b" / "trial-0001")
    assert (tmp_path / "machine-b" / "trial-0001" / "train" / "metrics.json").is_file()
    assert "retry of trial 0" in rescuer.stdout
    best = json.loads((tmp_path / "machine-b" / "best.json").read_text())
    assert best["best"]["trial"] == 1 and best["storage"].startswith("postgresql://")
    assert best["states"] == {"complete": 1, "fail": 1}
