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

def test_gpu_benchmark_tiny_on_cpu(tmp_path):
    "benchmarks/gpu.py at tiny sizes on the CPU: every row is there, compile is skipped with its reason, DDP runs over gloo."
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'gpu.py'), '--tiny', '--ddp', '2', '--out', str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / 'gpu.json').read_text())
    rows = {(x['case'], x['variant']): x for x in res['rows']}
    assert set(rows) == {('2d', 'fp32 eager'), ('2d', 'bf16'), ('2d', 'bf16 + channels-last'), ('2d', 'bf16 + compile'),
                         ('2d', 'bf16 + compile + channels-last'), ('3d', 'fp32 eager'), ('3d', 'bf16'), ('3d', 'bf16 + compile'),
                         ('2d', 'DDP x2 (bf16)')}
    for case in ('2d', '3d'):
        ref = rows[(case, 'fp32 eager')]['images_per_s']
        for (c, v), x in rows.items():
            if c != case or 'skipped' in x or v.startswith('DDP'): continue
            assert abs(x['speedup'] - x['images_per_s'] / ref) < 1e-9 * x['speedup'] and x['images_per_s'] > 0
    assert 'inductor' in rows[('2d', 'bf16 + compile')]['skipped']
    ddp = rows[('2d', 'DDP x2 (bf16)')]
    assert ddp.get('processes') == 2 and ddp['backend'] == 'gloo', ddp
    assert {(s['case'], s['precision']) for s in res['sampling']} == {('2d', 'fp32'), ('2d', 'bf16'), ('3d', 'fp32'), ('3d', 'bf16')}
    assert '| 2d | bf16 + compile |' in (tmp_path / 'gpu.md').read_text()

def test_volume_benchmark_tiny(tmp_path):
    "benchmarks/volume.py at 16^3: pixel, pixel with checkpointing and latent rows, ratios against pixel from the same run."
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'volume.py'), '--tiny', '--out', str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {x['way']: x for x in json.loads((tmp_path / 'volume.json').read_text())['rows']}
    assert set(rows) == {'pixel', 'pixel+ckpt', 'latent'} and all('error' not in x for x in rows.values()), rows
    assert rows['pixel']['grid'] == [16, 16, 16] and rows['latent']['grid'] == [4, 4, 4]          # the 4x autoencoder
    for x in rows.values():
        assert abs(x['time_ratio'] - x['step_s'] / rows['pixel']['step_s']) < 1e-9 and x['peak_bytes'] >= 0
        assert abs(x['saved_ratio'] - x['saved_bytes'] / rows['pixel']['saved_bytes']) < 1e-9
    assert rows['pixel+ckpt']['saved_bytes'] < rows['pixel']['saved_bytes']          # checkpointing keeps less for backward
    assert '| pixel+ckpt | 16^3 |' in (tmp_path / 'volume.md').read_text()

def test_volume_benchmark_bad_sizes(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'volume.py'), '--sizes', '20', '--out', str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and 'must be a multiple of 32' in r.stderr and not (tmp_path / 'volume.json').exists()
