"""Verdicts: `medsynth eval` says last, in words, whether its numbers mean anything. A synthetic set drawn like the
calibration ladder's noise rung is 'no closer to real than to noise'; downstream models trained for one step leave the
real-only baseline at chance, so every utility row is uninformative; the printed lines are those in metrics.json and
in the report's Verdict section. The rules themselves are proved against hand-written ladders and the known-answer
utility runs in nbs/62 and nbs/65."""
import json
import numpy as np
import pytest
from conftest import cli
from medsynth.data.phantoms import BrainPhantom, write_class_folders
from medsynth.core.io import write_png, read_image
from medsynth.evaluation.report import verdict_lines

@pytest.fixture(scope='module')
def sets(tmp_path_factory):
    "Real binary phantoms, and 'synthetic' images of noise with each real image's mean and spread, in class folders."
    d = tmp_path_factory.mktemp('verdicts')
    write_class_folders(d/'real', BrainPhantom((32, 32), prevalence=0.5, seed=0), 80)
    rng = np.random.default_rng(0)
    for p in sorted((d/'real').glob('*/*.png'))[:48]:
        x = read_image(p).astype(np.float64)
        (d/'noise'/p.parent.name).mkdir(parents=True, exist_ok=True)
        write_png(d/'noise'/p.parent.name/p.name, np.clip(x.mean() + x.std() * rng.standard_normal(x.shape), 0, 1))
    return d

@pytest.mark.parametrize('seed', [0, 1])
def test_eval_prints_uninformative_verdicts_last(sets, seed):
    out = sets/f'eval{seed}'
    r = cli('eval', '--real', sets/'real', '--synthetic', sets/'noise', '--out', out, '--metrics', 'fid,utility',
            '--utility-steps', 1, '--encoder-steps', 60, '--seed', seed, '--no-progress')
    assert r.returncode == 0, r.stderr[-2000:]
    v = json.loads((out/'metrics.json').read_text())['verdicts']
    assert v['fidelity']['verdict'] == 'uninformative' and v['fidelity']['position'] >= 0.5, v['fidelity']
    assert v['utility']['baseline']['verdict'] == 'uninformative', v['utility']['baseline']
    assert {s['verdict'] for s in v['utility']['sets'].values()} == {'uninformative'}
    lines = verdict_lines(v)
    assert len(lines) == 4 and 'did not learn' in lines[1] and 'no closer to real than to noise' in lines[0]
    assert r.stdout.strip().splitlines()[-4:] == [f"verdict: {t}" for t in lines]
    rep = (out/'report.md').read_text()
    assert rep.index('## Verdict') < rep.index('## Realistic?') and all(f"- {t}" in rep for t in lines)
