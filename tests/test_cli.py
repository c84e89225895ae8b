"The `medsynth` console script, end to end."
import subprocess, sys
import medsynth
from conftest import tool, cli

def run(*args): return cli(*args, timeout=120)

def test_version():
    r = run('--version')
    assert r.returncode == 0 and r.stdout.strip() == f"medsynth {medsynth.__version__}"

def test_help_lists_commands():
    r = run('--help')
    assert r.returncode == 0 and 'usage: medsynth' in r.stdout and 'info' in r.stdout

def test_no_command_prints_help():
    r = run()
    assert r.returncode == 0 and 'usage: medsynth' in r.stdout

def test_info():
    r = run('info')
    assert r.returncode == 0 and 'dpmpp_2m' in r.stdout and 'rflow' in r.stdout and 'min_snr' in r.stdout

def test_unknown_command_is_one_line_error():
    r = run('trian')
    assert r.returncode == 2 and "invalid choice: 'trian'" in r.stderr and 'Traceback' not in r.stderr

def test_import_has_no_side_effects():
    r = subprocess.run([sys.executable, '-c', 'import medsynth, medsynth.diffusion.samplers, medsynth.diffusion.objectives; print(medsynth.__version__)'], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == medsynth.__version__

def test_closed_pipe_is_not_an_error():
    "`medsynth paper --list | head -1`: the reader leaving early ends the command quietly, exit 0."
    import os
    r, w = os.pipe(); os.close(r)                       # a reader that has already gone
    try: p = subprocess.run([tool('medsynth'), 'paper', '--list'], stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    finally: os.close(w)
    assert p.returncode == 0 and p.stderr == '', p.stderr
