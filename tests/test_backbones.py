"""The `backbone` key end to end: SPADE and the diffusion transformer train (the loss falls) with DDPM eps/v/x0 and
rectified flow, in 2D and (SPADE) 3D; a run resumed from an earlier checkpoint ends with the uninterrupted run's
weights; `medsynth sample` samples them; a backbone that cannot serve the mode is a one-line error."""
import pytest, torch
from conftest import cli, one_line_error
from test_train import fixed_loss
from medsynth.training.config import make_config
from medsynth.training.learner import train
from medsynth.training.checkpoint import load_checkpoint

TINY = dict(channels=[16, 32], attention_levels=[False, True], num_head_channels=16, batch_size=4, epochs=4, ema_after=0,
            lr=3e-3, dit_width=32, dit_depth=2, dit_heads=2, patch_size=2)
CASES = [('spade', 'ddpm', 'eps', 2), ('spade', 'rflow', 'v', 2), ('spade', 'ddpm', 'x0', 3), ('dit', 'ddpm', 'v', 2),
         ('dit', 'rflow', 'v', 2), ('dit', 'ddpm', 'eps', 2)]

@pytest.mark.parametrize('backbone,strategy,prediction,dims', CASES, ids=['-'.join(map(str, c)) for c in CASES])
def test_backbone_lowers_the_loss(phantoms, tmp_path, backbone, strategy, prediction, dims):
    "Trained vs initial network on the same samples, times and noise (bravo: the image from its mask)."
    cfg = make_config(dict(TINY, data=str(phantoms/'sub'), mode='bravo', backbone=backbone, strategy=strategy,
                           prediction=prediction, dims=dims, size=[16, 16] if dims == 2 else [16, 16, 8],
                           batch_size=4 if dims == 2 else 1))
    train(cfg, tmp_path/'run', progress=False)
    before, after = fixed_loss(cfg), fixed_loss(cfg, load_checkpoint(tmp_path/'run/checkpoints/last.pt')['model'])
    assert after < 0.8 * before, (before, after)

def _same(a, b):
    for k in ('model', 'ema'):
        assert a[k].keys() == b[k].keys()
        for n in a[k]: assert torch.equal(a[k][n], b[k][n]), (k, n)

@pytest.mark.parametrize('backbone', ['spade', 'dit'])
def test_resume_is_exact_and_samples(phantoms, tmp_path, backbone):
    "One epoch then a resume to two equals two uninterrupted epochs bit for bit; the CLI samples the run."
    base = dict(TINY, data=str(phantoms/'sub'), mode='bravo', backbone=backbone, size=[16, 16], lr_schedule='constant')
    train(make_config(dict(base, epochs=2)), tmp_path/'full', progress=False)
    train(make_config(dict(base, epochs=1)), tmp_path/'cut', progress=False)
    train(make_config(dict(base, epochs=2)), tmp_path/'cut', resume=True, progress=False)
    a, b = load_checkpoint(tmp_path/'full/checkpoints/last.pt'), load_checkpoint(tmp_path/'cut/checkpoints/last.pt')
    assert a['epoch'] == b['epoch']
    _same(a, b)
    r = cli('sample', tmp_path/'cut', '--n', 2, '--steps', 3, '--out', tmp_path/'s', '--no-progress')
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path/'s').rglob('*.png')) + list((tmp_path/'s').rglob('*.nii.gz'))) >= 2

def test_spade_without_a_mask_is_one_line(phantoms, tmp_path):
    r = cli('train', f'data={phantoms/"cls"}', 'mode=uncond', 'backbone=spade', 'size=[16,16]', '--run', tmp_path/'r')
    one_line_error(r, 'backbone=spade', 'use mode=bravo or dual')

def test_controlnet_trains_only_the_control_and_samples(phantoms, tmp_path):
    "A ControlNet on a trained unconditional run: the base's weights come out bit for bit; the copy trains; the CLI samples."
    from medsynth.core.io import file_sha256
    base = dict(TINY, data=str(phantoms/'sub'), size=[16, 16], epochs=1)
    train(make_config(dict(base, mode='uncond')), tmp_path/'uncond', progress=False)
    ck = tmp_path/'uncond/checkpoints/last.pt'
    frozen, h = {k.removeprefix('ema_model.'): v for k, v in load_checkpoint(ck)['ema'].items() if k.startswith('ema_model.')}, file_sha256(ck)
    cfg = make_config(dict(base, mode='bravo', epochs=2, controlnet=str(tmp_path/'uncond')))
    train(cfg, tmp_path/'cn', progress=False)
    after = load_checkpoint(tmp_path/'cn/checkpoints/last.pt')
    for w in (after['model'], {k.removeprefix('ema_model.'): v for k, v in after['ema'].items() if k.startswith('ema_model.')}):
        for k, v in frozen.items(): assert torch.equal(w['base.' + k], v), k
    start = fixed_loss(cfg)                                    # the ControlNet at initialisation: the base's own loss
    assert fixed_loss(cfg, after['model']) < start, start
    assert file_sha256(ck) == h
    r = cli('sample', tmp_path/'cn', '--n', 2, '--steps', 3, '--out', tmp_path/'s', '--no-progress')
    assert r.returncode == 0, r.stderr
    with pytest.raises(Exception, match='controlnet run not found'):
        train(make_config(dict(cfg.__dict__, controlnet=str(tmp_path/'nowhere'))), tmp_path/'r', progress=False)

def test_backbone_benchmark_small(tmp_path):
    import json, subprocess, sys
    from conftest import ROOT
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'backbones.py'), '--out', str(tmp_path), '--size', '16', '--subjects', '4',
                        '--epochs', '1', '--batch', '4', '--n', '4', '--steps', '2', '--seg-steps', '5', '--encoder-steps', '5', '--backbones', 'spade', 'dit'],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path/'backbones.json').read_text())
    assert [row['backbone'] for row in res['rows']] == ['real (ceiling)', 'spade', 'dit']
    assert all(0 <= row['dice'] <= 1 and row['train_s'] > 0 for row in res['rows'][1:])
    assert all(row['fid'] >= 0 for row in res['rows']) and 0 < res['chance_dice'] < 1
    assert '| dit |' in (tmp_path/'backbones.md').read_text() and f"table: {tmp_path/'backbones.md'}" in r.stdout
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'backbones.py'), '--size', '18'], capture_output=True, text=True)
    assert r.returncode == 2 and '--size must be a multiple of 4' in r.stderr

def test_dit_trains_with_repa_on_its_tokens(tmp_path):
    "REPA (the published-system plug-in) aligns a DiT block's tokens with a domain encoder's: the alignment improves."
    import pandas as pd
    from medsynth.data.phantoms import BrainPhantom, write_class_folders
    from medsynth.evaluation.sets import read_set
    from medsynth.models.domain import train_encoder, save_encoder
    write_class_folders(tmp_path/'cls', BrainPhantom((16, 16), classes='kinds', k=3, seed=0), 48)
    s = read_set(tmp_path/'cls')
    save_encoder(train_encoder(s.images, s.labels, steps=10, batch_size=16, widths=(8, 16, 16, 16), seed=0), tmp_path/'enc.pt')
    cfg = make_config(dict(TINY, data=str(tmp_path/'cls'), mode='class', image='image', size=[16, 16], epochs=4, backbone='dit',
                           encoder='domain', encoder_weights=str(tmp_path/'enc.pt'), repa=0.5, repa_block='block0'))
    train(cfg, tmp_path/'run', progress=False)
    h = pd.read_csv(tmp_path/'run/logs/history.csv')
    assert 'repa' in h and h.repa.iloc[-1] < h.repa.iloc[0], h
