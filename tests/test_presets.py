"""Every paper's presets (`medsynth.app.presets`), dry-run: the parameters parse against the paper's `parameters` cell, a
small fake dataset in the paper's real layout passes the library's data check, the model builds at the preset's full
size (parameters counted on the meta device; built for real when its weights fit in 2 GB), and one training epoch of
a few steps runs at reduced size on the CPU. The configs are assembled as each paper notebook assembles them."""
import ast, json, math
from pathlib import Path
import numpy as np
import nibabel as nib
import pytest
import torch
from PIL import Image
from medsynth.app.presets import PRESETS, NEEDS, use_preset, train_keys
from medsynth.data.datacheck import check_data
from medsynth.models.domain import train_encoder, save_encoder
from medsynth.spaces.vae import AEConfig, train_autoencoder, latent_scale_factor, save_autoencoder
from medsynth.evaluation.sets import read_set
from medsynth.training.config import make_config
from medsynth.training.data import mode_of, space_of
from medsynth.training.network import build_model
from medsynth.training.learner import train

ROOT = Path(__file__).resolve().parents[1]
PAPER = dict(mri_synth='paper', mgdm='paper', m2d='paper', pds='paper', multiscale='brats240')   # the published preset
ISIC = ('AKIEC', 'BCC', 'BKL', 'DF', 'MEL', 'NV', 'VASC')
LIMIT = 2 * 2 ** 30                                      # bytes of fp32 weights built for real
torch.set_num_threads(1)

def parameters(paper) -> dict:
    "The literal `parameters` cell of papers/<paper>.ipynb, as a dict."
    nb = json.loads((ROOT/'papers'/f'{paper}.ipynb').read_text())
    cell = next(c for c in nb['cells'] if 'parameters' in c.get('metadata', {}).get('tags', []))
    return {t.id: ast.literal_eval(n.value) for n in ast.parse(''.join(cell['source'])).body for t in n.targets}

@pytest.mark.parametrize('paper', list(PRESETS))
def test_preset_keys_are_parameters_or_config_keys(paper):
    params, keys = parameters(paper), train_keys()
    assert 'preset' in params
    for name, spec in PRESETS[paper].items():
        blocks = {k: v for k, v in spec.items() if '=' in k}
        for b in [spec, *blocks.values()]:
            assert set(b) - {'train'} - set(blocks) <= set(params), (name, set(b) - set(params))
            assert set(b.get('train', {})) <= keys, (name, set(b.get('train', {})) - keys)
        assert {k.split('=')[0] for k in blocks} <= set(params), blocks.keys()
        sets = lambda sp: {k for b in [sp, *(v for j, v in sp.items() if '=' in j)] for k in b if '=' not in k} - {'train'}
        missing = sets(spec) ^ sets(PRESETS[paper]['phantom'])
        assert not missing, f"{paper}: presets phantom and {name} set different parameters: {missing}"

@pytest.mark.parametrize('paper', [p for p in PRESETS if p != 'multiscale'])
def test_the_published_preset_needs_its_data_in_one_line(paper):
    params = parameters(paper)
    for k in NEEDS[(paper, 'paper')]:
        given = {**params, **{j: f'/x/{j}' for j in NEEDS[(paper, 'paper')]}, k: params[k]}
        with pytest.raises(ValueError, match=f"{paper}: preset 'paper' needs {k}: ") as e:
            use_preset(paper, 'paper', given)
        assert '\n' not in str(e.value)

# Fake datasets in each paper's real layout, small (BraTS volumes are 240 x 240 x 155, ISIC images about 600 x 450: here
# a few small ones; PDS's two grids at their real size).

def _nifti(path, a, zooms=(1., 1., 1.)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(a, np.diag([*zooms, 1.])), str(path))

def brats(root, n=3, shape=(32, 32, 8), seed=0) -> Path:
    "BraTS 2021 subject folders: BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz, a tumour in each."
    rng = np.random.default_rng(seed)
    for i in range(n):
        s = f'BraTS2021_{i:05d}'
        seg = np.zeros(shape, np.uint8); c = np.array(shape) // 2
        seg[c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4, 1:-1] = 2; seg[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, 2:-2] = 4
        for m in ('t1', 't1ce', 't2', 'flair'):
            _nifti(root/s/f'{s}_{m}.nii.gz', (rng.random(shape) * 500 + 100 * (seg > 0)).astype(np.float32))
        _nifti(root/s/f'{s}_seg.nii.gz', seg)
    return root

def class_folders(root, classes, n=4, size=(48, 64), seed=0) -> Path:
    "RGB class folders root/<class>/<image>.jpg (ISIC's, MGDM's 0/1)."
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root/c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = (rng.random((*size, 3)) * 80 + 20 * k).astype(np.uint8)
            Image.fromarray(a).save(root/c/f'{c}_{i:03d}.jpg')
    return root

def pds_data(root, n=5, seed=0) -> tuple:
    """PDS subjects sub-XXXX/sub-XXXX_{alff,fa}.nii.gz (64 x 64 x 36 at 3 mm, 96 x 96 x 60 at 2 mm) and a
    Dosenbach-160-like label atlas (labels 1-160) on the 3 mm grid."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        _nifti(root/'sub'/f'sub-{i:04d}'/f'sub-{i:04d}_alff.nii.gz', rng.random((64, 64, 36)).astype(np.float32), (3., 3., 3.))
        _nifti(root/'sub'/f'sub-{i:04d}'/f'sub-{i:04d}_fa.nii.gz', rng.random((96, 96, 60)).astype(np.float32), (2., 2., 2.))
    atlas = np.zeros((64, 64, 36), np.int16)
    atlas[8:56, 8:56, 4:32] = 1 + np.arange(48 * 48 * 28).reshape(48, 48, 28) // (48 * 48 * 28 // 160 + 1)
    _nifti(root/'atlas.nii.gz', atlas, (3., 3., 3.))
    return root/'sub', root/'atlas.nii.gz'

# Each paper's training configs, assembled as its notebook assembles them from the preset's parameters `P` and keys `train`.

def mri_synth_cfgs(P, train, d, strategy='rflow', mode='dual'):
    train = {k: v for k, v in train.items() if not k.startswith('perceptual')}   # no perceptual_weights file given
    base = dict(dict(data=str(d), strategy=strategy, size=[P['size']] * 2, channels=P['channels'], attention_levels=P['attention'],
                     num_head_channels=min(32, P['channels'][-1]), batch_size=P['batch_size'], lr=P['lr'], sampler=P['sampler'],
                     sample_steps=P['steps'], seed=0), **train)
    return [dict(base, mode='seg', epochs=P['epochs_seg'], foreground_only=True), dict(base, mode=mode, epochs=P['epochs_image'])]

def mgdm_cfgs(P, train, d):
    train = dict(train); heads = train.pop('num_head_channels')
    return [dict(data=str(d), image='image', image_channels=3, size=[P['size']] * 2, channels=P['channels'], attention_levels=P['attention'],
                 num_res_blocks=P['res_blocks'], num_head_channels=min(heads, P['channels'][-1]), batch_size=16, lr=P['lr'],
                 valid_frac=0.1, seed=0, **train, mode='class', epochs=P['epochs'], cfg_dropout=0.1)]

def m2d_cfgs(P, train, d, ae, enc):
    base = dict(dict(data=str(d), mode='class', image='image', image_channels=P['image_channels'], size=[P['size']] * 2, channels=P['channels'],
                     attention_levels=P['attention'], num_head_channels=min(32, P['channels'][-1]), batch_size=P['batch_size'], lr=P['lr'],
                     epochs=P['epochs'], autoencoder=str(ae), valid_frac=0.1, ema_after=20, sampler='ddim', sample_steps=P['sample_steps'],
                     seed=0), **train)
    return [dict(base, encoder=P['encoder'], encoder_weights=str(enc), fusion=P['fusion'], fusion_dim=P['fusion_dim'], repa=P['repa'])]

def pds_cfgs(P, train, d, atlas):
    a, b, ch = P['a'], P['b'], P['channels']
    base = dict(dict(data=str(d), mode='pair', dims=3, images=[a, b], modalities=[a, b], size=list(P['grid_a']), second_size=list(P['grid_b']),
                     atlas=str(atlas), atlas_labels=list(P['atlas_labels']), channels=list(ch), attention_levels=[False] * len(ch),
                     num_head_channels=min(32, ch[0]), batch_size=P['batch_size'], lr=P['lr'], epochs=P['epochs'], ema_after=0,
                     sample_steps=P['sample_steps'], valid_frac=0.15, seed=0, loss='l1', prediction='eps', weighting='none',
                     ema_schedule='cosine_ramp', ema_beta=0.996), **train)
    return [dict(base, roi_weight=P['roi_weight'], **(dict(folds=P['folds'], fold=0) if P['folds'] else {}))]

def multiscale_cfgs(P, train, d):
    ch = P['channels']
    return [dict(data=str(d), mode='dual', images=train['images'], modalities=train['images'] + ['seg'], size=[P['size']] * 2, channels=ch,
                 attention_levels=[False] * (len(ch) - 1) + [True], num_head_channels=min(32, ch[-1]), epochs=12, batch_size=16, lr=2e-3,
                 timestep_sampler='loss_aware', valid_frac=0.15, min_content=0.1, ema_after=20, seed=0)]

def _ae(path, images, channels, in_channels=3):
    "A small autoencoder with `len(channels) - 1` halvings and 4 latent channels, trained for a few steps."
    ac = AEConfig(in_channels=in_channels, latent_channels=4, channels=tuple(channels), nonlocal_attn=False, steps=2, batch_size=4, lr=3e-3, seed=0)
    ae, _ = train_autoencoder(images * 2 - 1, ac)
    save_autoencoder(ae, ac, latent_scale_factor(ae, images * 2 - 1), path)
    return path

def _data(paper, tmp):
    "`(given, check, extra)`: the notebook parameters that point at the fake data, what the data check reads, and config inputs."
    if paper in ('mri_synth', 'multiscale'):
        d = brats(tmp/'brats')
        mods = ['t1', 't1ce', 'seg'] if paper == 'mri_synth' else ['t1', 't1ce', 't2', 'flair', 'seg']
        return dict(data=str(d)), [(d, mods)], dict(d=d)
    if paper == 'mgdm':
        d, t = class_folders(tmp/'train', ['0', '1'], size=(128, 128)), class_folders(tmp/'test', ['0', '1'], 2, (128, 128), seed=1)
        return dict(data=str(d), test_data=str(t)), [(d, None), (t, None)], dict(d=d)
    if paper == 'm2d':
        d, t = class_folders(tmp/'train', ISIC), class_folders(tmp/'test', ISIC, 2, seed=1)
        enc = tmp/'panderm.pth'; enc.write_bytes(b'')       # the released file's path; the full-size build is given its width
        ae8 = _ae(tmp/'ae8.pt', read_set(d, size=(64, 64), channels=3).images, (8, 8, 8, 8))   # factor 8, as the paper's
        return dict(data=str(d), test_data=str(t), encoder_weights=str(enc)), [(d, None), (t, None)], dict(d=d, ae=ae8, enc=enc)
    sub, atlas = pds_data(tmp/'pds')
    return dict(data=str(sub), atlas=str(atlas)), [(sub, ['alff', 'fa']), (atlas, None)], dict(d=sub, atlas=atlas)

CFGS = dict(mri_synth=mri_synth_cfgs, mgdm=mgdm_cfgs, m2d=m2d_cfgs, pds=pds_cfgs, multiscale=multiscale_cfgs)
CLASSES = dict(mgdm=2, m2d=7)
SMALL = dict(mri_synth=dict(size=[16, 16], channels=[8, 16], attention_levels=[False, True]),
             mgdm=dict(size=[16, 16], channels=[8, 16], attention_levels=[False, True]),
             m2d=dict(size=[16, 16], channels=[8, 16], attention_levels=[False, True], fusion_dim=8),
             pds=dict(size=[8, 8, 8], second_size=[12, 12, 8], channels=[8, 16], attention_levels=[False, False]),
             multiscale=dict(size=[16, 16], channels=[8, 16], attention_levels=[False, True]))

@pytest.mark.parametrize('paper', list(PRESETS))
def test_published_preset_dry_run(paper, tmp_path):
    given, checks, extra = _data(paper, tmp_path)
    params = parameters(paper)
    P, train_ = use_preset(paper, PAPER[paper], {**params, 'strategy': 'rflow', **given} if paper == 'mri_synth' else {**params, **given})
    for path, mods in checks:                            # the layout, through the library's data check
        size = [P['size']] * 2 if 'size' in P and mods != ['alff', 'fa'] else None
        rep = check_data(path, mods, size=size)
        assert rep.ok, str(rep)
    cfgs = CFGS[paper](P, train_, **extra)
    for c in cfgs:                                        # the model at full size: counted on the meta device
        cfg = make_config(c)
        space_of(cfg)                                     # the autoencoder, loaded (and cached) outside the meta device
        with torch.device('meta'):
            net = build_model(cfg, mode_of(cfg), num_classes=CLASSES.get(paper), feature_dim=1024 if cfg.encoder else None)
        n = sum(p.numel() for p in net.parameters())
        print(f"{paper} {PAPER[paper]} {cfg.mode}: {n / 1e6:.1f}M parameters ({4 * n / 2 ** 30:.2f} GiB fp32)")
        if 4 * n <= LIMIT:                                # and built for real where its weights fit in 2 GB
            real = build_model(cfg, mode_of(cfg), num_classes=CLASSES.get(paper), feature_dim=1024 if cfg.encoder else None)
            assert sum(p.numel() for p in real.parameters()) == n
            del real
        else:
            print(f"  not built for real: its fp32 weights alone exceed {LIMIT / 2 ** 30:.0f} GiB")
    if paper == 'm2d':                                    # reduced: a domain encoder for PanDerm's 303M-parameter ViT-L/16
        s = read_set(extra['d'], size=(16, 16), channels=3)
        save_encoder(train_encoder(s.images, s.labels, steps=3, batch_size=8, widths=(8, 8, 8, 8), seed=0), tmp_path/'enc.pt')
        small = dict(autoencoder=str(_ae(tmp_path/'ae2.pt', s.images, (8, 8))), encoder='domain', encoder_weights=str(tmp_path/'enc.pt'))
    else:
        small = {}
    c = dict(cfgs[-1], **SMALL[paper], **small, epochs=1, batch_size=2, num_res_blocks=1, num_head_channels=8, precision='fp32',
             compile=False, sample_steps=2)
    r = train(make_config(c), tmp_path/'run', progress=False)
    assert r['epochs_done'] == 1, r
    import pandas as pd
    loss = pd.read_csv(tmp_path/'run'/'logs'/'history.csv').train_loss
    assert len(loss) == 1 and math.isfinite(loss.iloc[0]), loss

@pytest.mark.parametrize('paper', list(PRESETS))
def test_the_paper_notebook_takes_its_preset(paper, tmp_path):
    "The notebook's own cells, run up to the one that applies the preset, hold the preset's values (given ones winning)."
    given, _, _ = _data(paper, tmp_path)
    nb = json.loads((ROOT/'papers'/f'{paper}.ipynb').read_text())
    code = [''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'code']
    ns = {}
    exec(code[0], ns)                                     # the parameters cell, then what medsynth paper -p would inject
    ns.update(given, out_dir=str(tmp_path/'out'), preset=PAPER[paper], epochs_seg=3, epochs=3)
    for src in code[1:]:
        exec(src, ns)
        if "use_preset('" in src: break
    want, train_ = use_preset(paper, PAPER[paper], {**given, 'strategy': ns.get('strategy'), 'epochs_seg': 3, 'epochs': 3})
    keys = {k for k in want if k in PRESETS[paper]['phantom']}
    assert {k: ns['P'][k] for k in keys} == {k: want[k] for k in keys}
    dropped = {'num_head_channels'} if paper == 'mgdm' else {k for k in train_ if k.startswith('perceptual')}
    assert ns['train'] == {k: v for k, v in train_.items() if k not in dropped}
    assert [ns['P'][k] for k in ('epochs', 'epochs_seg') if k in keys] in ([3], [])    # a given value wins
    k = 'grid_a' if paper == 'pds' else 'size'
    assert ns['P'][k] == PRESETS[paper][PAPER[paper]][k]
    assert paper == 'mgdm' or ns[k] == ns['P'][k]          # the notebook's own variable too (mgdm reads P)
