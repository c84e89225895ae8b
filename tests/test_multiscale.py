"""Multiscale end to end: a cascade trained and sampled through the CLI, a cascade killed mid-level that resumes
without repeating finished levels or epochs, bad pyramid configs as one-line errors, the paper through papermill with
tiny parameters, and the single-vs-pyramid benchmark."""
import csv, json, signal, subprocess, sys, time
import pandas as pd, pytest
from conftest import tool, ROOT, cli


@pytest.fixture(scope='module')
def data(phantoms): return phantoms/'sub'

TINY = ['size=[32,32]', 'channels=[8,16]', 'attention_levels=[false,false]', 'num_head_channels=8', 'batch_size=4', 'ema_after=0', 'sample_steps=3']

def test_cascade_trains_and_samples_through_the_cli(data, tmp_path):
    r = cli('train', f'data={data}', 'mode=bravo', 'levels=3', 'epochs=1', 'level_steps=[2,3,4]', *TINY, '--run', tmp_path/'c', '--no-progress')
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path/'c').iterdir() if p.name != '.medsynth.json') == ['config.yaml', 'level-0', 'level-1', 'level-2']
    r = cli('sample', tmp_path/'c', '--n', 3, '--out', tmp_path/'s', '--no-progress')
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path/'s'/'manifest.csv')))
    assert {x['key'] for x in rows} == {'t1ce', 'cond-mask', 'real-t1ce'} and rows[0]['steps'] == '2+3+4'

def test_killed_cascade_resumes_where_it_stopped(data, tmp_path):
    args = [f'data={data}', 'mode=uncond', 'levels=2', 'level_epochs=[30,2]', *TINY]
    p = subprocess.Popen([tool('medsynth'), 'train', *args, '--run', str(tmp_path/'c'), '--no-progress'], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log0 = tmp_path/'c'/'level-0'/'checkpoints'/'last.pt'
    end = time.time() + 300
    while not log0.exists():                           # the coarse level has finished; the fine one has checkpointed once
        assert p.poll() is None and time.time() < end, p.stderr.read().decode()[-2000:] if p.poll() is not None else 'timeout'
        time.sleep(0.5)
    p.send_signal(signal.SIGKILL); p.wait()
    coarse = (tmp_path/'c'/'level-1'/'checkpoints'/'last.pt').stat().st_mtime
    r = cli('train', *args, '--run', tmp_path/'c', '--resume', '--no-progress')
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path/'c'/'level-1'/'checkpoints'/'last.pt').stat().st_mtime == coarse      # the finished level is not trained again
    h = pd.read_csv(tmp_path/'c'/'level-0'/'logs'/'history.csv')
    assert h.epoch.tolist() == list(range(30)), h.epoch.tolist()                          # every epoch once

@pytest.mark.parametrize('args,message', [
    (['levels=0'], 'levels=0 is not allowed'),
    (['levels=3', 'size=[36,36]'], 'size=[36, 36] is not divisible by 8 (3 levels and a network that halves it 1 more time): use [32, 32] or [40, 40]'),
    (['levels=4', 'size=[36,36]'], 'size=[36, 36] is not divisible by 8 (4 levels): use [32, 32] or [40, 40]'),
    (['levels=2', 'level_steps=[3]'], 'level_steps=[3] must list 2 positive integers'),
    (['levels=2', 'aug_max=2'], 'aug_max=2 is not allowed: it must be a number in [0, 1]'),
])
def test_bad_pyramid_config_is_one_line(data, tmp_path, args, message):
    r = cli('train', f'data={data}', 'mode=uncond', *[a for a in TINY if not (a.startswith('size=') and any(b.startswith('size=') for b in args))], *args, '--run', tmp_path/'r')
    assert r.returncode == 2 and message in r.stderr and r.stderr.count('\n') == 1, r.stderr
    assert not (tmp_path/'r').exists()

def test_multiscale_paper_runs_with_tiny_parameters(tmp_path):
    r = cli('paper', 'multiscale', '--runs', tmp_path/'runs', '--no-progress', '-p', 'subjects', 4, '-p', 'size', 32, '-p', 'channels', '[8,16]',
            '-p', 'levels', 2, '-p', 'epochs', 2, '-p', 'batch_size', 8, '-p', 'level_steps', '[3,4]', '-p', 'sample_steps', 4,
            '-p', 'n_synthetic', 12, '-p', 'encoder_steps', 5, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    run = next((tmp_path/'runs'/'multiscale').iterdir())
    m = json.loads((run/'metrics.json').read_text())
    assert [t['method'] for t in m['table']] == ['single', 'pyramid (2 levels)'] and all(t['fid'] is not None for t in m['table'])
    assert m['table'][0]['train_epochs'] == m['table'][1]['train_epochs'] == 2 and set(m['consistency']) == {'back_projection 0', 'back_projection 5'}
    assert (run/'pyramid_levels.png').exists() and (run/'eval-pyramid'/'report.md').exists()
    # each method's fidelity verdict: the calibration ladder's, in metrics.json and atop its report
    assert set(m['verdicts']) == {'single', 'pyramid (2 levels)'}
    assert m['verdicts']['pyramid (2 levels)'] in (run/'eval-pyramid'/'report.md').read_text()
    assert f"verdict: pyramid (2 levels): {m['verdicts']['pyramid (2 levels)']}" in r.stdout
    bad = cli('paper', 'multiscale', '--runs', tmp_path/'runs', '--no-progress', '-p', 'preset', 'brats240')
    assert bad.returncode == 2 and "preset 'brats240' needs data" in bad.stderr, bad.stderr[-500:]

def test_multiscale_benchmark_small(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'multiscale.py'), '--out', str(tmp_path), '--small'], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path/'multiscale.json').read_text())
    single, pyr = res['table']
    assert (single['method'], pyr['method']) == ('single', 'pyramid (2 levels)') and single['train_epochs'] == pyr['train_epochs'] == 2   # equal training compute
    assert pyr['sample_steps'] == '3+4' and all(t['fid'] >= 0 and t['sample_seconds_per_image'] > 0 for t in res['table'])
    assert '| pyramid (2 levels) | 2 |' in (tmp_path/'multiscale.md').read_text()
