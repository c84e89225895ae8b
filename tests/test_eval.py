"`medsynth eval` end to end: phantom data in, metrics.json and report.md out; bad input is one line, exit 2, nothing written."
import json
import numpy as np
import pytest
from conftest import cli
from medsynth.data.phantoms import BrainPhantom, write_class_folders
from medsynth.core.io import write_png, write_nifti

def run(*args, timeout=900): return cli('eval', *args, '--no-progress', timeout=timeout)

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp('eval')
    write_class_folders(d/'real', BrainPhantom((32, 32), classes='kinds', k=3, seed=0), 120)
    write_class_folders(d/'train', BrainPhantom((32, 32), classes='kinds', k=3, seed=1), 90)
    write_class_folders(d/'synthetic', BrainPhantom((32, 32), classes='kinds', k=3, seed=2), 60)
    return d

def test_eval_cli_writes_report(data):
    out = data/'out'
    r = run('--real', data/'real', '--synthetic', data/'synthetic', '--train', data/'train', '--out', out, '--utility-steps', 60)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out/'metrics.json').read_text())
    for k in ('fid', 'kid', 'precision_recall', 'density_coverage', 'diversity', 'memorization', 'utility', 'phantom', 'calibration', 'per_class'): assert k in m, k
    assert m['skipped'].keys() == {'paired', 'lpips'} and '--lpips-weights' in m['skipped']['lpips']
    assert len(m['utility']['seeds']) == 3 and set(m['utility']['results']) == {'real', 'synthetic', 'real+synthetic'}
    rep = (out/'report.md').read_text()
    for s in ('## Realistic?', '## Varied?', '## Copies of training images?', '## Useful?', '## Not computed', 'Ordering by FID'): assert s in rep, s
    for f in ('samples.png', 'metrics.png', 'memorization.png', 'nearest.png', 'classes.png', 'utility.png', 'encoder.pt'): assert (out/f).exists(), f
    # the saved encoder makes a second evaluation measure on the same scale: the same sets give the same FID
    r2 = run('--real', data/'real', '--synthetic', data/'synthetic', '--out', data/'out2', '--metrics', 'fid', '--encoder', out/'encoder.pt')
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert abs(json.loads((data/'out2'/'metrics.json').read_text())['fid'] - m['fid']) < 1e-6 * max(1, m['fid'])

def test_fid_ordering_on_phantoms(data):
    "FID between disjoint real halves is far below real vs blurred and real vs noise, and the report shows the ordering."
    out = data/'cal'
    assert run('--real', data/'real', '--synthetic', data/'synthetic', '--out', out, '--metrics', 'fid,kid').returncode == 0
    cal = json.loads((out/'metrics.json').read_text())['calibration']
    assert 3 * cal['real half B']['fid'] < min(cal['blurred half B']['fid'], cal['noise']['fid']), cal
    order = (out/'report.md').read_text().split('Ordering by FID: ')[1].split('.')[0].split(' < ')
    assert order[0] == 'real half B' and order.index('real half B') < min(order.index('blurred half B'), order.index('noise')), order

def _one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    err = r.stderr.strip()
    assert err.startswith('medsynth: error:') and '\n' not in err and 'Traceback' not in err, err
    for w in words: assert w in err, (w, err)

def test_bad_inputs(data, tmp_path):
    d = tmp_path
    (d/'empty').mkdir()
    _one_line_error(run('--real', data/'real', '--synthetic', d/'empty', '--out', d/'o1'), 'empty', 'holds no images')
    _one_line_error(run('--real', data/'real', '--synthetic', d/'missing', '--out', d/'o2'), 'missing', 'not found')
    (d/'rgb').mkdir(); [write_png(d/'rgb'/f'{i}.png', np.random.rand(3, 32, 32)) for i in range(8)]
    _one_line_error(run('--real', data/'real', '--synthetic', d/'rgb', '--out', d/'o3'), '3 channel(s)', '--channels')
    (d/'nan').mkdir(); v = np.random.rand(16, 16, 8).astype(np.float32); v[3, 3, 3] = np.nan
    write_nifti(d/'nan'/'a.nii.gz', np.random.rand(16, 16, 8)); write_nifti(d/'nan'/'b.nii.gz', v)
    _one_line_error(run('--real', data/'real', '--synthetic', d/'nan', '--out', d/'o4'), 'b.nii.gz', 'NaN')
    (d/'few').mkdir(); [write_png(d/'few'/f'{i}.png', np.random.rand(32, 32)) for i in range(3)]
    _one_line_error(run('--real', data/'real', '--synthetic', d/'few', '--out', d/'o5', '--metrics', 'density_coverage'), 'at least 6 images')
    _one_line_error(run('--real', data/'real', '--synthetic', data/'synthetic', '--out', d/'o6', '--features', 'inception', '--feature-weights', d/'pt_inception.pth'), 'pt_inception.pth', '--feature-weights')
    _one_line_error(run('--real', data/'real', '--synthetic', data/'synthetic', '--out', d/'o7', '--metrics', 'fid,lpips', '--lpips-weights', d/'alex.pth'), 'alex.pth', '--lpips-weights')
    _one_line_error(run('--real', data/'real', '--synthetic', data/'synthetic', '--out', d/'o8', '--metrics', 'precison_recall'), "did you mean 'precision_recall'")
    assert not any((d/f'o{i}').exists() for i in range(1, 9))

def test_size_mismatch_resizes_real_with_warning(data, tmp_path):
    (tmp_path/'small').mkdir()
    ph = BrainPhantom((24, 24), seed=5)
    for i in range(12): write_png(tmp_path/'small'/f'{i}.png', ph.render(i)['t1ce'].clip(0, 1))
    r = run('--real', data/'real', '--synthetic', tmp_path/'small', '--out', tmp_path/'o', '--metrics', 'fid,kid')
    assert r.returncode == 0, r.stderr[-1500:]
    assert 'resized from 32x32 to the synthetic size 24x24' in r.stderr

def test_segmentation_batches_are_lesion_balanced(monkeypatch):
    "Half of each segmentation batch comes from the lesion images, the rest from all; uniform sets draw as before."
    import torch
    import medsynth.evaluation.utility as U
    fg, n, bs, reps = torch.tensor([3, 7, 11]), 20, 33, 3000
    b = torch.stack([U.batch_indices(torch.Generator().manual_seed(s), n, bs, fg) for s in range(reps)])
    assert b.shape == (reps, bs) and torch.isin(b[:, :16], fg).all()               # the first batch_size // 2: lesions
    rest = b[:, 16:].flatten()                                                       # the other 17: uniform over all n
    counts = torch.bincount(rest, minlength=n).double()
    assert (counts - len(rest) / n).abs().max() < 5 * (len(rest) / n * (1 - 1 / n)) ** 0.5, counts
    lesion = torch.bincount(b[:, :16].flatten(), minlength=n)[fg].double()             # uniform over the lesion images
    assert (lesion - 16 * reps / 3).abs().max() < 5 * (16 * reps * 2 / 9) ** 0.5, lesion
    g = lambda: torch.Generator().manual_seed(5)
    assert torch.equal(U.batch_indices(g(), n, bs, fg), U.batch_indices(g(), n, bs, fg))       # deterministic
    for same in (None, torch.arange(n), torch.tensor([], dtype=torch.long)):                     # nothing to balance
        assert torch.equal(U.batch_indices(g(), n, bs, same), torch.randint(0, n, (bs,), generator=g()))
    seen = []                                              # fit_downstream passes the lesion images, only to segment
    monkeypatch.setattr(U, 'batch_indices',
                        lambda g, n, bs, f=None: seen.append(f) or torch.randint(0, n, (bs,), generator=g))
    x, m = torch.rand(6, 1, 16, 16), torch.zeros(6, 1, 16, 16)
    m[[1, 4], :, 4:8, 4:8] = 1
    U.fit_downstream('segment', x, m, 2, seed=0, steps=2, batch_size=4)
    U.fit_downstream('classify', x, torch.tensor([0, 1, 0, 0, 1, 0]), 2, seed=0, steps=1, batch_size=4)
    assert [None if f is None else f.tolist() for f in seen] == [[1, 4], [1, 4], None]
