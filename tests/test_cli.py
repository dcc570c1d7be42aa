"""The way in: `gcompress-bench COMMAND` and the seed's CLIs answer --help and bad input without importing the
heavy stack (torch, the methods' work, matplotlib, Triton, lm-eval, pytest)."""
import subprocess
import sys

import pytest

from gcompress_bench import cli

from .conftest import REPO

HEAVY = ("torch", "transformers", "matplotlib", "triton", "lm_eval", "pytest",
         "gcompress_bench.methods.palu.factors", "gcompress_bench.suites.infer")
PROBE = """
import runpy, sys, time
t0 = time.perf_counter()
sys.argv = [{module!r}, *{args!r}]
try:
    runpy.run_module({module!r}, run_name="__main__")
except SystemExit as e:
    code = e.code
print("RESULT", code, round(time.perf_counter() - t0, 3), [m for m in {heavy!r} if m in sys.modules])
"""


def probe(module, *args):
    proc = subprocess.run([sys.executable, "-c", PROBE.format(module=module, args=list(args), heavy=HEAVY)],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")})
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    _, code, seconds, loaded = line.split(" ", 3)
    return code, float(seconds), eval(loaded), proc


@pytest.mark.parametrize("module, args", [
    ("gcompress_bench.llm_run", ["--help"]),
    ("gcompress_bench.llm_eval", ["--help"]),
    ("gcompress_bench", ["run", "--help"]),
    ("gcompress_bench", ["compare", "--help"]),
    ("gcompress_bench", ["run", "--suite", "bleu"]),
])
def test_help_and_bad_input_import_nothing_heavy(module, args):
    code, seconds, loaded, proc = probe(module, *args)
    assert loaded == [] and code == ("2" if "bleu" in args else "0"), proc.stdout[-2000:] + proc.stderr[-2000:]
    assert seconds < 3   # about 0.25 s on an idle 2-core machine; a loaded CI machine gets room
    if "bleu" not in args:
        assert "--palu-ratio" in proc.stdout or "--exp-group" in proc.stdout


def test_the_console_script_lists_its_commands_and_names_a_wrong_one(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "usage: gcompress-bench {run,eval,check,report,compare} [options]   " \
                                  "(gcompress-bench COMMAND --help)"
    assert [line.split()[0] for line in out.splitlines()[2:]] == list(cli.COMMANDS)
    assert cli.main([]) == 2
    assert cli.main(["bogus"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("gcompress-bench: unknown command 'bogus'; allowed: run, eval, "
                                                        "check, report, compare")
    assert cli.main(["report"]) == 2
    assert capsys.readouterr().err == "usage: gcompress-bench report RUN_DIR [RUN_DIR ...]\n"
    assert cli.main(["report", "--help"]) == 0
    for command in ("run", "eval", "check", "compare"):
        with pytest.raises(SystemExit) as e:
            cli.main([command, "--help"])
        assert e.value.code == 0, command
    assert cli.main(["eval", "--suite", "infer_sweep"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("gcompress-bench eval: --suite: unknown suite 'infer_sweep'; "
                                                        "allowed: ppl, lmeval, longctx")


def test_a_plug_in_that_cannot_be_imported_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("GCOMPRESS_SUITES", "no_such_suite_module")
    assert cli.main(["run", "--help"]) == 2
    assert capsys.readouterr().err == ("gcompress-bench: GCOMPRESS_SUITES: cannot import 'no_such_suite_module' "
                                       "(No module named 'no_such_suite_module'); allowed: importable module names, "
                                       "comma-separated\n")


@pytest.mark.parametrize("argv, line", [
    (["run", "--exp-gr", "x"], "gcompress-bench run: --exp-gr: unknown option; closest: --exp-group (see --help)"),
    (["eval", "--palu-ratoi=0.5"], "gcompress-bench eval: --palu-ratoi=0.5: unknown option; closest: --palu-ratio "
                                   "(see --help)"),
    (["run", "--zzzz"], "gcompress-bench run: --zzzz: unknown option (see --help)"),
])
def test_an_unknown_or_abbreviated_option_is_one_line_naming_the_closest(argv, line, capsys):
    """A prefix is not taken for the option it starts (--exp-gr slipped past a wrapper's guard once)."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and capsys.readouterr().err.splitlines() == [line]


SCRIPTS = sorted([*(REPO / "tools").glob("*.py"), *(REPO / "tools").glob("*.sh"), *(REPO / "slurm").iterdir()])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_answers_help_with_its_usage_and_exit_0(script, tmp_path):
    """--help does nothing else: it installs, submits, writes and imports nothing heavy."""
    cmd = [sys.executable] if script.suffix == ".py" else ["bash"]
    proc = subprocess.run([*cmd, str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO / 'src'}:{REPO}", "HOME": str(tmp_path)})
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert len(proc.stdout.splitlines()) >= 2 and "unknown" not in proc.stdout.lower()
    assert list(tmp_path.iterdir()) == []


def test_run_help_names_every_profile_layout_method_and_job():
    import yaml

    from gcompress_bench import methods, suites
    from gcompress_bench.config import LAYOUTS, SUITES_FILE
    out = subprocess.run([sys.executable, "-m", "gcompress_bench", "run", "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=60).stdout
    flat = " ".join(out.split())   # argparse wraps the help text
    profiles = yaml.safe_load(SUITES_FILE.read_text())["profiles"]
    for flag, choices in (("--profile", profiles), ("--layout", LAYOUTS), ("--variant", methods.load())):
        text = flat.split(f"{flag} {flag.lstrip('-').replace('-', '_').upper()}")[-1].split(" --", 1)[0]   # its option line
        assert all(c in text for c in choices), (flag, text)
    runs = subprocess.run([sys.executable, "-m", "gcompress_bench", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=60).stdout
    assert all(f"  {c}" in runs for c in cli.COMMANDS) and all(j in flat for j in suites.jobs() if j != "dims")
