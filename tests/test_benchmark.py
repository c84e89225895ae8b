"The benchmarks run at small sizes and write what they promise."
import json, subprocess, sys
from conftest import ROOT

def test_sampler_benchmark_small(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'samplers.py'), '--out', str(tmp_path), '--n', '500', '--nfe', '5', '10', '12'],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((tmp_path / 'samplers.json').read_text())
    libs = {row['library'] for row in data['rows']}
    assert libs == {'medsynth', 'diffusers'}
    assert all(row['nfe'] <= row['nfe_target'] for row in data['rows'])
    md = (tmp_path / 'samplers.md').read_text()
    assert 'Goal: at 10 NFE' in md and '| medsynth | dpm++(2m) |' in md and '| medsynth | unipc bh2 ays |' in md
    assert 'Goal: at 12 NFE' in md and 'Goal: at 5 NFE' in md and '| diffusers | UniPCMultistep bh1 |' in md
    assert (tmp_path / 'samplers.png').stat().st_size > 10_000
    assert f"table: {tmp_path / 'samplers.md'}" in r.stdout

def test_bad_arguments_exit_nonzero(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'samplers.py'), '--out', str(tmp_path), '--nfe', '0'], capture_output=True, text=True)
    assert r.returncode == 2 and '--nfe values must be >= 1' in r.stderr

def test_loader_benchmark_small(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'loader.py'), '--out', str(tmp_path), '--subjects', '2', '--size', '32', '32', '24',
                        '--steps', '1', '--batches', '3'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / 'loader.json').read_text())
    assert set(res['loader_slices_per_s']) == {'no_cache', 'memory', 'disk'} and res['slices'] > 0
    for k, v in res['loader_slices_per_s'].items(): assert abs(res['ratio'][k] - v / res['train_images_per_s']) < 1e-9 * v
    assert 'Goal: cached loaders >= 10x training consumption' in (tmp_path / 'loader.md').read_text()

def test_training_benchmark_small(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'training.py'), '--out', str(tmp_path), '--steps', '3', '--repeats', '1', '--size', '16',
                        '--batch', '4', '--n-sample', '2', '--sample-steps', '2'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / 'training.json').read_text())
    assert abs(res['overhead'] - (min(res['learner_s_per_step']) / min(res['bare_s_per_step']) - 1)) < 1e-12
    assert set(res['sampling_images_per_s']) == {'ddim', 'euler', 'heun', 'dpmpp_2m', 'dpmpp_3m', 'ddpm'}
    assert 'Learner overhead' in (tmp_path / 'training.md').read_text()
