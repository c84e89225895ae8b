"""Augmentation (config `augment`): MONAI spatial transforms move an image, its mask and its conditioning maps alike
(torch.flip as the oracle for flips; image/mask alignment for the affine), intensity transforms leave masks alone, the
draw depends on (seed, epoch, index) only, a stopped-and-resumed run with augmentation ends bit-exact, and an unknown
preset is a one-line error listing the choices."""
import pandas as pd, pytest, torch
from conftest import cli, one_line_error
from medsynth.training.config import make_config
from medsynth.training.data import (AUGMENT_PRESETS, INTENSITY_AUGMENTS, AugmentCB, augment_batch, augmentation,
                                    build_dataloaders, build_datasets)
from medsynth.training.learner import build_learner, train
from medsynth.training.checkpoint import load_checkpoint

TINY = dict(channels=[16, 32], attention_levels=[False, True], num_head_channels=16, batch_size=4, ema_after=0,
            size=[16, 16], mode='bravo')

def _blob(n, shape):
    "`n` asymmetric binary masks (uint8) of `shape`, each a box at its own place, and their images 2 * mask - 1."
    m = torch.zeros(n, 1, *shape, dtype=torch.uint8)
    for i in range(n):
        m[(i, 0) + tuple(slice(i % 2, s // 2 + i % 3) for s in shape)] = 1  # lo + hi < s: no flip maps it to itself
    return m, m.float() * 2 - 1

def _batch(n, shape, index=None):
    m, img = _blob(n, shape)
    src = img * 0.5                                                       # a conditioning image (translate-like)
    return dict(t1ce=img, t1=src, mask=m, index=torch.arange(n) if index is None else index, label=torch.zeros(n))

KEYS, MASKS = ('t1ce', 't1', 'mask'), ('mask',)

@pytest.mark.parametrize('shape', [(16, 16), (8, 8, 8)], ids=['2d', '3d'])
def test_flip_moves_image_mask_and_conditioning_alike(shape):
    b = _batch(12, shape)
    out = augment_batch(augmentation(('flip',), KEYS, MASKS, shape), b, KEYS, seed=0, epoch=0)
    axes = list(range(1, len(shape) + 1))
    subsets = [[a for j, a in enumerate(axes) if k >> j & 1] for k in range(2 ** len(axes))]
    seen = []
    for i in range(12):
        f = [s for s in subsets if torch.equal(out['mask'][i], b['mask'][i].flip(s))]
        assert len(f) == 1, i                                             # the mask moved by exactly one set of flips
        seen.append(tuple(f[0]))
        assert torch.equal(out['t1ce'][i], b['t1ce'][i].flip(f[0])) and torch.equal(out['t1'][i], b['t1'][i].flip(f[0]))
    assert len(set(seen)) > 2 and out['mask'].dtype == torch.uint8      # several different draws across samples
    assert torch.equal(out['label'], b['label'])                          # what is not an image passes through

@pytest.mark.parametrize('shape', [(32, 32), (16, 16, 16)], ids=['2d', '3d'])
def test_affine_keeps_mask_on_its_image(shape):
    "Mask (nearest) and image (bilinear) resampled by one draw agree; the mask of another draw does not (the control)."
    n = 16
    b = _batch(n, shape)
    aug = augmentation(('affine',), KEYS, MASKS, shape)
    out = augment_batch(aug, b, KEYS, seed=0, epoch=0)
    other = augment_batch(aug, b, KEYS, seed=0, epoch=1)
    assert set(out['mask'].unique().tolist()) <= {0, 1}
    moved = [i for i in range(n) if not torch.equal(out['mask'][i], b['mask'][i])]
    assert len(moved) >= 3, moved                                         # prob 0.5: 16 samples, some moved
    for i in moved:
        inside = out['t1ce'][i] > 0                                       # where the resampled image is the box
        assert (inside != out['mask'][i].bool()).float().mean() < 0.02, i
        assert torch.allclose(out['t1'][i], out['t1ce'][i] * 0.5, atol=1e-5)   # the conditioning image moved alike
    mism = [(out['t1ce'][i] > 0).ne(other['mask'][i].bool()).float().mean() for i in moved
            if not torch.equal(out['mask'][i], other['mask'][i])]
    assert mism and max(mism) > 0.02                                      # a wrong mask would be caught

def test_intensity_leaves_masks_alone():
    b = _batch(8, (16, 16))
    out = augment_batch(augmentation(INTENSITY_AUGMENTS, KEYS, MASKS), b, KEYS, seed=0, epoch=0)
    assert torch.equal(out['mask'], b['mask'])
    changed = [i for i in range(8) if not torch.equal(out['t1ce'][i], b['t1ce'][i])]
    assert changed and all(not torch.equal(out['t1'][i], b['t1'][i]) for i in changed)
    assert augmentation(INTENSITY_AUGMENTS, ('mask',), MASKS) is None     # a mask alone has nothing to change

def test_draw_depends_on_seed_epoch_index_only():
    aug = augmentation(AUGMENT_PRESETS['mri'], KEYS, MASKS, (16, 16))
    b = _batch(8, (16, 16))
    a1, a2 = (augment_batch(aug, b, KEYS, seed=3, epoch=2) for _ in range(2))
    for k in KEYS:
        assert torch.equal(a1[k], a2[k]), k
    # the same samples in another order (another batch) get the same draws: only (seed, epoch, index) matters
    p = torch.tensor([5, 2, 7, 0, 1, 3, 6, 4])
    a3 = augment_batch(aug, {k: v[p] for k, v in b.items()}, KEYS, seed=3, epoch=2)
    for k in KEYS:
        assert torch.equal(a3[k], a1[k][p]), k
    for other in (dict(seed=3, epoch=3), dict(seed=4, epoch=2)):
        a4 = augment_batch(aug, b, KEYS, **other)
        assert not torch.equal(a4['t1ce'], a1['t1ce']), other

def test_training_batches_are_augmented(phantoms):
    cfg = make_config(dict(TINY, data=str(phantoms/'sub'), augment='light'))
    tr, va, cl = build_datasets(cfg)
    dls = build_dataloaders(tr, va, cfg)
    assert 'index' in next(iter(dls.train))[0] and 'index' not in next(iter(dls.valid))[0]
    learn = build_learner(cfg, '/tmp/unused-run', dls, cl, progress=False)
    assert [type(c) for c in learn.cbs if isinstance(c, AugmentCB)] == [AugmentCB]
    none = build_learner(make_config(dict(TINY, data=str(phantoms/'sub'))), '/tmp/unused-run', dls, cl, progress=False)
    assert not any(isinstance(c, AugmentCB) for c in none.cbs)

def test_resume_with_augmentation_is_bit_exact(phantoms, tmp_path):
    "A run stopped after epoch 1 (time budget 0) and resumed ends with the weights and losses of an uninterrupted one."
    # foreground slices only: 6 training samples, one batch an epoch (cheap), a different draw each epoch
    base = dict(TINY, data=str(phantoms/'sub'), augment='mri', epochs=3, timestep_sampler='loss_aware',
                foreground_only=True)
    train(make_config(base), tmp_path/'full', progress=False)
    train(make_config(dict(base, max_minutes=0)), tmp_path/'cut', progress=False)
    assert load_checkpoint(tmp_path/'cut/checkpoints/last.pt')['epoch'] == 1
    train(make_config(base), tmp_path/'cut', resume=True, progress=False)
    a, b = (load_checkpoint(tmp_path/r/'checkpoints/last.pt') for r in ('full', 'cut'))
    for k in ('model', 'ema'):
        for n in a[k]:
            assert torch.equal(a[k][n], b[k][n]), (k, n)
    for sa, sb in zip(a['opt']['state'].values(), b['opt']['state'].values()):
        assert all(torch.equal(sa[n], sb[n]) for n in sa)
    ha, hb = (pd.read_csv(tmp_path/r/'logs/history.csv') for r in ('full', 'cut'))
    assert list(hb.epoch) == [0, 1, 2] and (ha.train_loss.values == hb.train_loss.values).all()

def test_unknown_preset_is_one_line(phantoms, tmp_path):
    r = cli('train', f'data={phantoms/"sub"}', 'augment=heavy', 'size=[16,16]', '--run', tmp_path/'r', '--no-progress')
    one_line_error(r, "augment='heavy'", 'none, flip, light, mri', 'affine', 'noise')
    assert not (tmp_path/'r').exists()
    with pytest.raises(ValueError, match='augment'):
        make_config(dict(augment=3))
    assert make_config(dict(augment=['flip', 'noise'])).augment == ['flip', 'noise']
