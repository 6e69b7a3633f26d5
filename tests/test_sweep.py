"""`mrbench sweep`: grid expansion, checks before anything runs, skip/resume, failures,
slice-list consistency, the slurm array script."""

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_run_settings, write_tiny_root

from mrbench.cli import main
from mrbench.errors import MrbenchError
from mrbench.store import RunStore
from mrbench.sweep import check_slice_lists, load_experiment, run_sweep, write_slurm


def write_experiment(path, sweep: str, header: str = "") -> str:
    path.write_text(textwrap.dedent(header) + '\n[run]\nexperiment = "exp"\n\n' + textwrap.dedent(sweep))
    return str(path)


GRID = """
[sweep]
scarcity = [0, 1]
seeds = [0]
methods = [
  "zero-filled",
  { method = "stl", name = "stl-small", set = ["model.chans=4"] },
]
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_data") / "d"
    write_tiny_root(root, contrasts=("AXT1", "AXT2", "AXFLAIR"), per_split={"train": 4, "val": 1, "test": 1}, slices=4)
    return root


def test_grid_expansion_and_run_names(tmp_path, data_root):
    f = write_experiment(tmp_path / "e.toml", GRID)
    exp = load_experiment(f, tiny_run_settings(data_root, tmp_path / "runs"))
    names = [cfg.run_name for cfg in exp.configs.values()]
    assert names == [
        "zero-filled-none-s0-seed0",
        "zero-filled-none-s1-seed0",
        "stl-small-s0-seed0",
        "stl-small-s1-seed0",
    ]
    cfgs = list(exp.configs.values())
    assert [c.scarcity for c in cfgs] == [0, 1, 0, 1]
    assert cfgs[2].model.chans == 4 and cfgs[0].model.chans == 4  # tiny settings + entry override
    assert exp.directory == tmp_path / "runs" / "exp"
    cmd = exp.command(exp.cells[2], threads=1)
    assert cmd[3:5] == ["run", "stl"] and "model.chans=4" in cmd and 'run.name="stl-small-s0-seed0"' in cmd
    assert cmd[cmd.index("--scarcity") + 1] == "0" and "--resume" in cmd


@pytest.mark.parametrize(
    "sweep, needle",
    [
        ('[sweep]\nmethods = ["stl", "nope"]\n', "sweep.methods[1] (nope): method: unknown method 'nope'"),
        ("[sweep]\nscarcity = [-1]\n", "sweep.scarcity: expected a list of whole numbers"),
        ("[sweep]\nseed = [0]\n", "unknown key(s) in [sweep]: seed"),
        ('[sweep]\nmethods = [{ method = "stl", sets = [] }]\n', "sweep.methods[0]: unknown key(s) sets"),
        ('[sweep]\nmethods = [{ method = "stl", set = ["train.budgt=3"] }]\n', "unknown key 'train.budgt'"),
        ('[sweep]\nmethods = ["stl", { method = "stl" }]\n', "give them distinct names"),
        ('[sweep]\nmethods = ["stl"]\nscarcity = [0, 9]\n', None),  # checked when the run assembles data
        ("[sweep\n", "invalid TOML"),
    ],
)
def test_experiment_errors_name_the_file_and_key(tmp_path, data_root, sweep, needle):
    f = write_experiment(tmp_path / "bad.toml", sweep)
    if needle is None:
        load_experiment(f)
        return
    with pytest.raises(MrbenchError) as err:
        load_experiment(f)
    assert needle in str(err.value) and "bad.toml" in str(err.value)
    res = CliRunner().invoke(main, ["sweep", f])
    assert res.exit_code == 2 and "Traceback" not in res.output and needle in res.output


def test_missing_file_and_bad_jobs_exit_2(tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["sweep", str(tmp_path / "none.toml")])
    assert res.exit_code == 2 and "does not exist" in res.output
    f = write_experiment(tmp_path / "e.toml", GRID)
    res = r.invoke(main, ["sweep", f, "--jobs", "0"])
    assert res.exit_code == 2 and "--jobs must be ≥ 1" in res.output


@pytest.mark.slow
def test_sweep_runs_skips_resumes_and_reports_failures(tmp_path, data_root):
    out = tmp_path / "runs"
    sweep = GRID.replace(
        '  { method = "stl"',
        '  { method = "joint", name = "broken", set = ["data.tasks=AXT1,AXPD", "data.scarce=AXPD"] },\n  { method = "stl"',
    )
    f = write_experiment(tmp_path / "e.toml", sweep)
    sets = tiny_run_settings(data_root, out)
    exp = load_experiment(f, sets)
    lines = []
    result = run_sweep(exp, jobs=2, report=lines.append)
    status = {o.run_dir.name: o.status for o in result.outcomes}
    assert status == {
        "zero-filled-none-s0-seed0": "done",
        "zero-filled-none-s1-seed0": "done",
        "broken-s0-seed0": "failed",
        "broken-s1-seed0": "failed",
        "stl-small-s0-seed0": "done",
        "stl-small-s1-seed0": "done",
    }
    failed = [o for o in result.outcomes if o.status == "failed"]
    assert all("AXPD" in o.message for o in failed), failed[0].message  # the run's own one-line error
    assert (out / "exp" / "logs" / "broken-s0-seed0.log").exists()
    assert not result.ok and result.slice_problems == []
    assert "2 at a time × 1 threads" in lines[0]
    runs, train, evaluate = result.time_split()  # the 4 finished runs' own clocks
    manifests = [json.loads((o.run_dir / "manifest.json").read_text()) for o in result.outcomes if o.status == "done"]
    assert runs == 4 and train == pytest.approx(sum(m["train_seconds"] for m in manifests))
    assert evaluate == pytest.approx(sum(m["wall_seconds"] - m["train_seconds"] for m in manifests)) and evaluate > 0
    for name in ("stl-small-s0-seed0", "stl-small-s1-seed0"):
        assert RunStore(out / "exp" / name).is_done()
    # STL's abundant-task phase is the same at both levels: trained by one cell, loaded by the
    # other (they ran at the same time: the second waited on the phase's lock)
    loaded, saved, trained = result.shared_split()
    assert loaded == 1 and saved == 16 and trained == 32 + 16
    # the two levels really differ in the scarce task's slices, and agree across methods
    m0 = json.loads((out / "exp" / "stl-small-s0-seed0" / "manifest.json").read_text())["training_slices"]
    m1 = json.loads((out / "exp" / "stl-small-s1-seed0" / "manifest.json").read_text())["training_slices"]
    assert m1["AXT2/equispaced/4x"]["slices"] == m0["AXT2/equispaced/4x"]["slices"] // 2

    # re-running: done runs skipped; an incomplete one (DONE removed) resumed from last.pt
    first_metrics = (out / "exp" / "stl-small-s0-seed0" / "metrics.json").read_text()
    (out / "exp" / "stl-small-s0-seed0" / "DONE").unlink()
    exp2 = load_experiment(f, sets)
    exp2.configs = {c: cfg for c, cfg in exp2.configs.items() if c.entry.name != "broken"}
    result2 = run_sweep(exp2, jobs=1, threads=1)  # same threads as before: bit-identical metrics
    status2 = {o.run_dir.name: (o.status, o.resumed) for o in result2.outcomes}
    assert status2["stl-small-s0-seed0"] == ("done", True)
    assert status2["stl-small-s1-seed0"][0] == "skipped" and status2["zero-filled-none-s0-seed0"][0] == "skipped"
    assert (out / "exp" / "stl-small-s0-seed0" / "metrics.json").read_text() == first_metrics
    assert result2.ok

    # a tampered manifest is caught by the slice-list check
    man = out / "exp" / "zero-filled-none-s1-seed0" / "manifest.json"
    data = json.loads(man.read_text())
    data["training_slices"]["AXT2/equispaced/4x"]["sha256"] = "0" * 64
    man.write_text(json.dumps(data))
    problems = check_slice_lists(exp2)
    assert len(problems) == 1 and "scarcity 1, task AXT2/equispaced/4x" in problems[0]
    assert "zero-filled-none-s1-seed0" in problems[0] and "stl-small-s1-seed0" in problems[0]

    # the CLI: finished runs skipped, the broken ones fail again; exit 1 (failures + slice-list mismatch)
    res = CliRunner().invoke(main, ["sweep", f, "--quiet", *sum((["--set", s] for s in sets), [])])
    assert res.exit_code == 1
    assert "4 skipped" in res.output and "2 failed" in res.output and "slice lists differ" in res.output


def test_slurm_script_lists_the_remaining_runs(tmp_path, data_root, monkeypatch):
    import sys
    from pathlib import Path

    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # write the script, submit nothing (no sbatch)
    f = write_experiment(tmp_path / "e.toml", GRID)
    exp = load_experiment(f, tiny_run_settings(data_root, tmp_path / "runs"))
    script, commands = write_slurm(exp, jobs=2, threads=3)
    lines = commands.read_text().splitlines()
    assert len(lines) == 4 and all(
        " run " in line and line.endswith('--threads "${SLURM_CPUS_PER_TASK:-3}"') for line in lines
    )
    text = script.read_text()
    assert "#SBATCH --array=0-3%2" in text and "#SBATCH --cpus-per-task=3" in text
    assert "#SBATCH --requeue" in text and "#SBATCH --signal=B:TERM@120" in text and 'eval "exec $line"' in text
    assert "--partition" not in text and "--gres" not in text
    res = CliRunner().invoke(
        main,
        [
            "sweep",
            f,
            "--executor",
            "slurm",
            "--partition",
            "gpu",
            "--time",
            "04:00:00",
            "--mem",
            "16G",
            "--gpus-per-run",
            "1",
            *sum((["--set", s] for s in tiny_run_settings(data_root, tmp_path / "runs")), []),
        ],
    )
    assert res.exit_code == 0 and "sweep.sbatch" in res.output
    text = script.read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=04:00:00", "#SBATCH --mem=16G", "#SBATCH --gres=gpu:1"):
        assert line in text
    assert all("train.device=cuda" in line for line in commands.read_text().splitlines())


def test_slurm_commands_survive_a_space_in_the_path_and_read_the_allocation(tmp_path, data_root):
    """The array script's command lines, as bash runs them: quoted paths (a space is safe) and
    the allocation's CPU count as torch threads."""
    import subprocess

    spaced = tmp_path / "my runs"
    f = write_experiment(tmp_path / "e.toml", GRID)
    exp = load_experiment(f, tiny_run_settings(data_root, spaced))
    script, commands = write_slurm(exp, jobs=1, threads=2)
    assert (
        f'--output="{spaced.resolve()}/default/slurm/%a.log"' in script.read_text() or "my runs" in script.read_text()
    )
    line = commands.read_text().splitlines()[0]
    echoed = subprocess.run(
        ["bash", "-c", f"SLURM_CPUS_PER_TASK=7; set -- {line}; printf '%s\\n' \"$@\""], capture_output=True, text=True
    ).stdout.splitlines()
    assert echoed[echoed.index("--threads") + 1] == "7"
    out_arg = next(a for a in echoed if a.startswith("run.out="))
    assert out_arg == f"run.out={spaced}"


def test_sweep_check_reports_the_slice_lists_without_running(tmp_path, data_root):
    f = write_experiment(tmp_path / "e.toml", GRID)
    sets = sum((["--set", s] for s in tiny_run_settings(data_root, tmp_path / "runs")), [])
    res = CliRunner().invoke(main, ["sweep", f, "--check", *sets])
    assert res.exit_code == 0 and "0 of 4 runs done" in res.output


def test_sweep_seeds_option_replaces_the_files_seeds(tmp_path, data_root):
    """--seeds adds seeds to a grid from the command line (issue 30 item 8: seeds 3–4 on a 3-seed grid)."""
    f = write_experiment(tmp_path / "e.toml", GRID)
    sets = sum((["--set", s] for s in tiny_run_settings(data_root, tmp_path / "runs")), [])
    res = CliRunner().invoke(main, ["sweep", f, "--check", "--seeds", "3,4,5", *sets])
    assert res.exit_code == 0 and "0 of 12 runs done" in res.output
    exp = load_experiment(f, tiny_run_settings(data_root, tmp_path / "runs"), seeds=[3, 4])
    assert sorted({c.run_name.rsplit("-", 1)[1] for c in exp.configs.values()}) == ["seed3", "seed4"]
    for bad, needle in (
        ("3,x", "expected comma-separated whole numbers"),
        ("-1", "must be ≥ 0"),
        (",", "give at least one number"),
    ):
        res = CliRunner().invoke(main, ["sweep", f, "--check", "--seeds", bad, *sets])
        assert res.exit_code == 2 and "--seeds" in res.output and needle in res.output and "Traceback" not in res.output


def test_task_sampling_is_a_sweep_axis_shown_in_run_names(tmp_path, data_root):
    """Issue 12 defect 3: one sampling rule for all methods by default (stratified), and the
    rule as a sweep axis whose non-default value shows in the run name (and so the table row)."""
    sweep = """
    [sweep]
    sampling = ["stratified", "uniform"]
    methods = ["zero-filled", "joint", { method = "stl", name = "stl-small" }, "maml"]
    """
    exp = load_experiment(write_experiment(tmp_path / "e.toml", sweep), tiny_run_settings(data_root, tmp_path / "runs"))
    names = sorted(cfg.run_name for cfg in exp.configs.values())
    assert names == sorted(
        [
            "zero-filled-none-s0-seed0",  # samples nothing: one run, not one per rule
            "joint-varnet-s0-seed0",
            "joint-varnet-uniform-s0-seed0",
            "stl-small-s0-seed0",
            "stl-small-uniform-s0-seed0",
            "maml-varnet-s0-seed0",
            "maml-varnet-uniform-s0-seed0",
        ]
    )
    assert {cfg.train.sampling for cfg in exp.configs.values() if "uniform" not in cfg.run_name} == {"stratified"}
    cell = next(c for c, cfg in exp.configs.items() if cfg.run_name == "joint-varnet-uniform-s0-seed0")
    assert "train.sampling=uniform" in exp.command(cell, threads=1)
    with pytest.raises(MrbenchError, match="sweep.sampling"):
        load_experiment(write_experiment(tmp_path / "f.toml", '[sweep]\nsampling = ["by-slice"]\n'))


def test_meta_learners_draw_tasks_by_the_shared_rule():
    import torch

    from mrbench.methods.meta import sample_tasks

    g = torch.Generator().manual_seed(0)
    draws = [sample_tasks(2, 1, g)[0] for _ in range(4000)]  # stratified: tasks equally often
    assert abs(sum(draws) / len(draws) - 0.5) < 0.03
    weights = torch.tensor([80.0, 20.0])  # uniform-by-slice: in proportion to the tasks' slices
    draws = [sample_tasks(2, 1, g, weights)[0] for _ in range(4000)]
    assert abs(sum(draws) / len(draws) - 0.2) < 0.03


def test_profile_merges_over_the_file_for_runs_and_sweeps(tmp_path, data_root):
    """``--profile cpu`` merges ``[profile.cpu]`` over the file (sweep table included) and
    every cell's command carries it; an unknown profile names the valid ones."""
    f = write_experiment(
        tmp_path / "e.toml",
        GRID
        + """
[train]
budget = 900

[profile.cpu.train]
budget = 300

[profile.cpu.run]
experiment = "exp-cpu"

[profile.cpu.sweep]
seeds = [0, 1]
""",
    )
    plain = load_experiment(f, [])
    cpu = load_experiment(f, [], profile="cpu")
    assert len(cpu.cells) == 2 * len(plain.cells) and {c.seed for c in cpu.cells} == {0, 1}
    assert cpu.directory.name == "exp-cpu"
    assert {cfg.train.budget for cfg in cpu.configs.values()} == {300}
    cmd = cpu.command(cpu.cells[-1], threads=1)
    assert cmd[cmd.index("--profile") + 1] == "cpu"
    from mrbench.config import load_config

    assert load_config(f, [], "cpu", method="stl").train.budget == 300
    assert load_config(f, [], None, method="stl").train.budget == 900
    r = CliRunner().invoke(main, ["run", "stl", "--config", f, "--profile", "gpu"])
    assert r.exit_code == 2 and "--profile gpu" in r.output and "(valid: cpu)" in r.output


def test_time_split_sums_readable_manifests_of_finished_runs(tmp_path):
    """A garbled or missing manifest is left out of the summary's sums, not a traceback."""
    from mrbench.sweep import Outcome, SweepResult

    def run(name, status, manifest):
        d = tmp_path / name
        d.mkdir()
        if manifest is not None:
            (d / "manifest.json").write_text(manifest)
        return Outcome(None, d, status)

    result = SweepResult(
        [
            run("a", "done", json.dumps({"train_seconds": 10.0, "wall_seconds": 16.0})),
            run("b", "done", json.dumps({"train_seconds": 4.0, "wall_seconds": 5.5})),
            run("garbled", "done", '{"train_sec'),
            run("missing", "done", None),
            run("no-keys", "done", "{}"),
            run("failed", "failed", json.dumps({"train_seconds": 99.0, "wall_seconds": 99.0})),
        ],
        30.0,
        [],
    )
    assert result.time_split() == (2, pytest.approx(14.0), pytest.approx(7.5))


def test_progress_line_counts_runs_and_estimates_the_time_left():
    """Issue 31 item 4: done/total, elapsed and an ETA from the finished runs' own times."""
    import time as _time

    from mrbench.sweep import Outcome, Progress

    p = Progress(todo=5, jobs=2, t0=_time.perf_counter() - 30)
    line = p.finished(Outcome(None, Path("a"), "done", seconds=20.0))
    assert line.startswith("1/5 run, elapsed 0:30, ETA ") and line.endswith("0:40")  # 4 left × 20 s ÷ 2 jobs
    p.finished(Outcome(None, Path("b"), "skipped"))  # locked elsewhere: counted, no time
    line = p.finished(Outcome(None, Path("c"), "done", seconds=40.0))
    assert line.startswith("3/5 run") and line.endswith("ETA 0:30")  # 2 left × 30 s mean ÷ 2 jobs
    p.finished(Outcome(None, Path("d"), "failed", seconds=10.0))
    assert "ETA" not in p.finished(Outcome(None, Path("e"), "done", seconds=10.0))


def test_an_entry_can_run_at_some_of_the_levels(tmp_path):
    """Issue 31: the quick demo runs most regimes at one level; an entry's `scarcity` limits it,
    and a level outside the sweep's is an error."""
    from mrbench.errors import MrbenchError
    from mrbench.sweep import load_experiment

    f = tmp_path / "e.toml"
    f.write_text(
        '[sweep]\nscarcity = [0, 2]\nseeds = [0, 1]\nmethods = ["joint", { method = "stl", scarcity = [0] }]\n'
    )
    exp = load_experiment(f)
    cells = sorted((c.entry.method, c.scarcity, c.seed) for c in exp.configs)
    assert cells == [("joint", 0, 0), ("joint", 0, 1), ("joint", 2, 0), ("joint", 2, 1), ("stl", 0, 0), ("stl", 0, 1)]
    f.write_text('[sweep]\nscarcity = [0, 2]\nmethods = [{ method = "stl", scarcity = [1] }]\n')
    with pytest.raises(MrbenchError, match=r"scarcity \[1\] must be among the sweep's levels \[0, 2\]"):
        load_experiment(f)
