"""PDS end to end: a paired (two-grid) stage 1 trained and sampled through the CLI, a refinement that beats stage 1 on
held-out pairs, bad paired inputs as one-line errors that write nothing, a stopped refinement that resumes to the same
weights from its cached stage-1 targets, and the paper through papermill with tiny parameters."""
import csv, json, shutil
import nibabel as nib, numpy as np, pytest, torch, yaml
from conftest import cli
from medsynth.data.phantoms import BrainPhantom, write_subjects
from medsynth.systems.pds_data import write_phantom_atlas

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp('pds')
    ph = BrainPhantom((32, 32, 24), second_size=(48, 48, 32), prevalence=1., seed=0)
    write_subjects(d/'sub', ph, 8, modalities=('t1', 'fa'))
    write_phantom_atlas(d/'atlas.nii.gz', ph)
    return d

def pair_args(d):
    return [f'data={d/"sub"}', 'mode=pair', 'dims=3', 'images=[t1,fa]', 'modalities=[t1,fa]', 'size=[16,16,12]', 'second_size=[24,24,16]',
            f'atlas={d/"atlas.nii.gz"}', 'atlas_labels=[1]', 'channels=[8,16]', 'attention_levels=[false,false]', 'num_head_channels=8',
            'batch_size=4', 'ema_after=0', 'lr=0.002', 'sample_steps=4', 'valid_frac=0.25', 'seed=0']

@pytest.fixture(scope='module')
def stage1(data):
    "A tiny stage-1 pair run with the pattern-aware loss, trained through the CLI."
    run = data/'s1'
    r = cli('train', *pair_args(data), 'roi_weight=1.0', 'epochs=2', '--run', run, '--no-progress')
    assert r.returncode == 0, r.stderr[-2000:]
    return run

def test_stage1_trains_and_samples_both_grids_through_the_cli(stage1, tmp_path):
    assert (stage1/'checkpoints'/'last.pt').exists() and (stage1/'config.yaml').exists()
    r = cli('sample', stage1, '--n', 2, '--out', tmp_path/'s', '--no-progress')
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path/'s'/'manifest.csv')))
    assert sorted((x['file'], x['key']) for x in rows) == [('00000_fa.nii.gz', 'fa'), ('00000_t1.nii.gz', 't1'), ('00001_fa.nii.gz', 'fa'), ('00001_t1.nii.gz', 't1')]
    assert {x['mode'] for x in rows} == {'pair'} and {x['steps'] for x in rows} == {'4'} and len({x['checkpoint'] for x in rows}) == 1
    for x in rows:                                      # each map on its own grid, intensities in [0, 1]
        v = np.asarray(nib.load(str(tmp_path/'s'/x['file'])).dataobj)
        assert v.shape == {'t1': (16, 16, 12), 'fa': (24, 24, 16)}[x['key']] and np.isfinite(v).all() and v.min() >= 0 and v.max() <= 1

def refine_cfg(data, stage1, **kw):
    "The stage-1 config of `pair_args` (roi_weight 0) plus `refine=true`, `stage1`, and `kw`."
    from medsynth.training.config import make_config
    cfg = {k: yaml.safe_load(v) for k, v in (a.split('=', 1) for a in pair_args(data))}
    return make_config(dict(cfg, refine=True, stage1=str(stage1), **kw))

def test_refinement_beats_stage1_on_heldout_pairs(data, stage1, tmp_path):
    from medsynth.training.learner import train
    out = train(refine_cfg(data, stage1, epochs=60), tmp_path/'s2', progress=False)
    m = json.loads((tmp_path/'s2'/'metrics.json').read_text())
    assert out['report'] == m and len(m['subjects']) == 2                # the validation subjects (never trained on)
    s, r = m['stage1'], m['refined']
    assert set(s) == set(r) == {'ssim', 'psnr', 'mae', 'ssim_roi', 'psnr_roi', 'mae_roi'}
    assert r['mae'] < 0.8 * s['mae'] and r['psnr'] > s['psnr'] + 2, m       # seeds 0-4 (refinement seed): mae ratio 0.31-0.33, psnr gain 8.0-8.5 dB
    assert r['mae_roi'] < s['mae_roi'] and r['psnr_roi'] > s['psnr_roi'], m  # seeds 0-4: mae_roi ratio 0.69-0.82, psnr_roi gain 1.6-2.9 dB
    c = cli('sample', tmp_path/'s2', '--n', 2, '--out', tmp_path/'smp', '--no-progress')     # `medsynth sample` on a refinement run
    assert c.returncode == 0, c.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path/'smp'/'manifest.csv')))
    assert sorted({x['key'] for x in rows}) == ['cond-t1', 'fa-refined', 'fa-stage1', 'real-fa'] and len(rows) == 8
    v = {(x["index"], x["key"]): np.asarray(nib.load(str(tmp_path/'smp'/x['file'])).dataobj) for x in rows}
    assert v[('0', 'fa-refined')].shape == (24, 24, 16) and v[('0', 'cond-t1')].shape == (16, 16, 12)
    err = lambda k: np.mean([np.abs(v[(i, k)] - v[(i, 'real-fa')]).mean() for i in ('0', '1')])
    assert err('fa-refined') < err('fa-stage1')                          # the same comparison as metrics.json, from the written files

def test_stopped_refinement_resumes_to_the_same_weights(data, stage1, tmp_path):
    from medsynth.training.learner import train
    from medsynth.training.checkpoint import load_checkpoint
    full = train(refine_cfg(data, stage1, epochs=3), tmp_path/'full', progress=False)
    assert full['epochs_done'] == 3 and not full['stopped_early']
    part = train(refine_cfg(data, stage1, epochs=3, max_minutes=0), tmp_path/'part', progress=False)
    assert part['stopped_early'] and part['epochs_done'] == 1 and 'report' not in part
    cache = (tmp_path/'part'/'stage1.pt').stat().st_mtime_ns
    done = train(refine_cfg(data, stage1, epochs=3), tmp_path/'part', resume=True, progress=False)
    assert done['epochs_done'] == 3 and 'report' in done and (tmp_path/'part'/'stage1.pt').stat().st_mtime_ns == cache   # stage 1 reused, not sampled again
    a, b = load_checkpoint(tmp_path/'full'/'checkpoints'/'last.pt'), load_checkpoint(tmp_path/'part'/'checkpoints'/'last.pt')
    for k in ('model', 'ema'):
        assert a[k].keys() == b[k].keys()
        for n in a[k]: assert torch.equal(a[k][n], b[k][n]), (k, n)
    assert a['step'] == b['step']

def _no_affine(path, src):
    img = nib.load(str(src)); im = nib.Nifti1Image(np.asarray(img.dataobj), None)
    im.header['qform_code'] = 0; im.header['sform_code'] = 0; nib.save(im, str(path))

@pytest.mark.parametrize('case', ['unmatched', 'no_affine', 'no_stage1', 'no_second_size'])
def test_bad_paired_input_is_one_line(data, tmp_path, case):
    args = pair_args(data) + ['epochs=1']
    if case == 'unmatched':                             # the fa maps in their own folder, one subject short
        fa = tmp_path/'fa'
        subs = sorted(p for p in (data/'sub').iterdir() if p.is_dir())
        for s in subs[:-1]: (fa/s.name).mkdir(parents=True); shutil.copy(next(s.glob('*fa.nii.gz')), fa/s.name)
        args += [f'second_data={fa}']; message = f"1 subject(s) have 't1' but no 'fa': {subs[-1].name}"
    elif case == 'no_affine':
        _no_affine(tmp_path/'atlas.nii.gz', data/'atlas.nii.gz')
        args += [f'atlas={tmp_path/"atlas.nii.gz"}', 'roi_weight=1.0']; message = 'no affine: its grid cannot be resampled (qform_code and sform_code are 0)'
    elif case == 'no_stage1':
        args += ['refine=true', f'stage1={tmp_path/"stage1"}']; message = f'{tmp_path/"stage1"}: stage-1 run not found'
    else:
        args = [a for a in args if not a.startswith('second_size=')]; message = "mode=pair needs second_size, the 3D grid of 'fa'"
    r = cli('train', *args, '--run', tmp_path/'r')
    assert r.returncode == 2 and message in r.stderr and r.stderr.count('\n') == 1, r.stderr
    assert not (tmp_path/'r').exists()

def test_pds_paper_runs_with_tiny_parameters(tmp_path):
    r = cli('paper', 'pds', '--runs', tmp_path/'runs', '--no-progress', '-p', 'subjects', 6, '-p', 'heldout_subjects', 2, '-p', 'epochs', 2,
            '-p', 'refine_epochs', 3, '-p', 'channels', '[8,16]', '-p', 'sample_steps', 3, '-p', 'n_samples', 2, '-p', 'compare_roi', 'false', timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run = next((tmp_path/'runs'/'pds').iterdir())
    md = (run/'pds.md').read_text()
    assert '| 1 | stage 1 |' in md and '| 1 | stage 1 + refinement |' in md and 'SSIM ROI' in md
    m = json.loads((run/'metrics.json').read_text())
    assert m['heldout_subjects'] == 2 and set(m['table']) == {'roi_weight 1 / stage 1', 'roi_weight 1 / stage 1 + refinement'}
    assert all(set(v) == {'ssim', 'psnr', 'mae', 'ssim_roi', 'psnr_roi', 'mae_roi'} for v in m['table'].values())
    for f in ('grids_roi.png', 'stage1_samples.png', 'heldout_refinement.png', 'stage2/stage1.pt', 'stage1/samples/manifest.csv'): assert (run/f).exists(), f
    bad = cli('paper', 'pds', '--runs', tmp_path/'runs', '--no-progress', '-p', 'data', tmp_path)
    assert bad.returncode == 2 and 'with data, give atlas' in bad.stderr, bad.stderr[-500:]

def test_folds_split_pair_subjects_and_refine_only_its_own_stage1(data, stage1, tmp_path):
    "`folds=4 fold=i` through the PDS datasets: each subject validated in exactly one fold; a refinement of another fold's stage 1 is refused."
    from medsynth.training.data import build_datasets
    from medsynth.training.learner import train
    folds = []
    for i in range(4):
        tr, va, _ = build_datasets(refine_cfg(data, stage1, folds=4, fold=i))
        subj = lambda s: {s.dataset.subjects[j]['subject'] for j in s.indices}
        assert not subj(tr) & subj(va) and len(subj(tr) | subj(va)) == 8
        folds.append(subj(va))
    assert sorted(len(v) for v in folds) == [2, 2, 2, 2] and len(set().union(*folds)) == 8     # no subject in two folds, all validated
    with pytest.raises(ValueError, match='stage 1 was trained with folds=0 fold=0, this refinement has folds=4 fold=1'):
        train(refine_cfg(data, stage1, folds=4, fold=1, epochs=1), tmp_path/'r', progress=False)
    assert not (tmp_path/'r'/'stage1.pt').exists()

def test_refinement_trains_on_joint_stage1_samples_with_pds_loss(data, stage1, tmp_path):
    "refine_inputs=joint: the cached stage-1 maps are the target part of joint samples (not the conditional ones); the PDS loss keys train."
    from medsynth.training.learner import train
    from medsynth.training.checkpoint import load_checkpoint
    from medsynth.training.data import build_datasets
    from medsynth.systems.pds_stages import stage1_targets, load_stage1
    cfg = refine_cfg(data, stage1, epochs=1, refine_bce=1.0, refine_mse=0.5, refine_inputs='joint')
    out = train(cfg, tmp_path/'j', progress=False)
    assert out['epochs_done'] == 1 and np.isfinite(out['report']['refined']['mae'])
    c = load_checkpoint(tmp_path/'j'/'stage1.pt')
    cfg1, net1, _, _ = load_stage1(cfg)
    tr = build_datasets(cfg)[0]
    assert c['inputs'] == 'joint' and torch.equal(c['train'], stage1_targets(net1, cfg1, tr, cfg.seed, joint=True))
    assert not torch.allclose(c['train'], stage1_targets(net1, cfg1, tr, cfg.seed))        # conditional sampling differs
    r = cli('train', *pair_args(data), 'refine=true', f'stage1={stage1}', 'refine_inputs=given', '--run', tmp_path/'bad')
    assert r.returncode == 2 and 'refine_inputs' in r.stderr and r.stderr.count('\n') == 1, r.stderr

def test_pds_paper_cross_validates_over_folds(tmp_path):
    "`-p folds 2`: both folds run in sequence, each reports on its own validation subjects, the table is mean +- sd over folds."
    import pandas as pd
    r = cli('paper', 'pds', '--runs', tmp_path/'runs', '--no-progress', '-p', 'subjects', 6, '-p', 'folds', 2, '-p', 'epochs', 1,
            '-p', 'refine_epochs', 1, '-p', 'channels', '[8,16]', '-p', 'sample_steps', 2, '-p', 'n_samples', 1, '-p', 'compare_roi', 'false',
            '-p', 'perceptual', 0, '-p', 'batch_size', 2, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run = next((tmp_path/'runs'/'pds').iterdir())
    m = json.loads((run/'metrics.json').read_text())
    assert m['folds'] == {'k': 2, 'run': [0, 1]} and m['sd_over'] == 'folds' and m['heldout_subjects'] == 6
    per = pd.read_csv(run/'heldout_per_subject.csv')
    by_fold = per[per.method == 'stage 1'].groupby('fold').subject.apply(set)
    assert sorted(by_fold.index) == [0, 1] and not by_fold[0] & by_fold[1] and len(by_fold[0] | by_fold[1]) == 6
    fm = per.groupby(['method', 'fold']).mae.mean()['stage 1 + refinement']            # each fold's mean, then over folds
    assert np.isclose(m['table']['roi_weight 1 / stage 1 + refinement']['mae'], fm.mean())
    assert np.isclose(m['sd']['roi_weight 1 / stage 1 + refinement']['mae'], fm.std(ddof=1))
    assert 'mean ± sd over folds' in (run/'pds.md').read_text()
    for f in ('fold-0/stage1/checkpoints/last.pt', 'fold-1/stage2/stage1.pt', 'fold-0/stage1/samples/manifest.csv'): assert (run/f).exists(), f
    assert not (run/'data'/'heldout').exists()
