"""Best checkpoint (config `best_by`): checkpoints/best.pt is the network of the epoch with the lowest validation loss
in the run's history, a resumed run keeps the best so far, and `medsynth sample --weights best` samples it (other images
than `--weights last` when the epochs differ); a run without best.pt is a one-line error."""
import csv, math
import pandas as pd, pytest, torch
from conftest import cli, one_line_error
from medsynth.core.io import file_sha256
from medsynth.training.config import make_config
from medsynth.training.learner import train
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.runs import load_run

# foreground slices only: 6 training samples (one batch an epoch) and 2 validation ones; a constant learning rate, so
# a run of fewer epochs passes through the same weights
BASE = dict(channels=[16, 32], attention_levels=[False, True], num_head_channels=16, batch_size=4, ema_after=0,
            size=[16, 16], foreground_only=True, lr_schedule='constant', epochs=4)

def _best_epoch(run):
    h = pd.read_csv(run/'logs/history.csv')
    return int(h.epoch[h.valid_loss.idxmin()]) + 1, float(h.valid_loss.min()), h

@pytest.fixture(scope='module')
def run(phantoms, tmp_path_factory):
    "A 4-epoch run, then resumed for a 5th epoch at a learning rate that wrecks the network (worse, never the best)."
    r = tmp_path_factory.mktemp('best')/'run'
    cfg = make_config(dict(BASE, data=str(phantoms/'sub')))
    train(cfg, r, progress=False)
    before = _best_epoch(r)
    bad = make_config(dict(BASE, data=str(phantoms/'sub'), epochs=5, lr=0.3))
    train(bad, r, resume=True, force=True, progress=False)
    return r, cfg, before

def test_best_is_the_epoch_with_the_lowest_valid_loss(run, tmp_path):
    r, cfg, (epoch, loss, _) = run
    best = load_checkpoint(r/'checkpoints/best.pt')
    assert best['epoch'] == epoch and math.isclose(best['valid_loss'], loss, rel_tol=1e-6), (best['epoch'], epoch)
    # its network is that epoch's: a run stopped there (same config, constant lr) ends with the same weights
    train(make_config(dict(BASE, data=cfg.data, epochs=epoch)), tmp_path/'short', progress=False)
    short = load_checkpoint(tmp_path/'short/checkpoints/last.pt')
    for k in short['model']:
        assert torch.equal(best['model'][k], short['model'][k]), k

def test_resume_keeps_the_best(run):
    r, _, (epoch, loss, _) = run
    e5, l5, h = _best_epoch(r)
    assert len(h) == 5 and h.valid_loss.iloc[-1] > loss            # the 5th epoch did worse than the best before
    assert (e5, l5) == (epoch, loss)
    best, last = load_checkpoint(r/'checkpoints/best.pt'), load_checkpoint(r/'checkpoints/last.pt')
    assert best['epoch'] == epoch and last['epoch'] == 5          # a run that forgot its best would write epoch 5
    assert last['best'] == dict(valid_loss=best['valid_loss'], epoch=epoch)

def _images(out):
    rows = list(csv.DictReader(open(out/'manifest.csv')))
    return rows, [(out/x['file']).read_bytes() for x in rows if x['key'] == 't1ce']

def test_sample_weights_best_and_last(run, tmp_path):
    r, _, _ = run
    _, net, h, _ = load_run(r, 'best')
    best = load_checkpoint(r/'checkpoints/best.pt')
    assert all(torch.equal(v.cpu(), best['model'][k]) for k, v in net.state_dict().items())
    assert h == file_sha256(r/'checkpoints/best.pt')
    outs = {}
    for w in ('best', 'last'):
        p = cli('sample', r, '--n', 2, '--steps', 2, '--weights', w, '--out', tmp_path/w, '--no-progress')
        assert p.returncode == 0, p.stderr
        outs[w] = _images(tmp_path/w)
    (rb, ib), (rl, il) = outs['best'], outs['last']
    assert {x['weights'] for x in rb} == {'best'} and rb[0]['checkpoint'] == file_sha256(r/'checkpoints/best.pt')
    assert rl[0]['checkpoint'] == file_sha256(r/'checkpoints/last.pt')
    assert ib != il                                                # epoch 4 or before against the wrecked epoch 5

def test_best_by_none_writes_none_and_sampling_it_is_one_line(phantoms, tmp_path):
    r = tmp_path/'run'
    train(make_config(dict(BASE, data=str(phantoms/'sub'), epochs=1, best_by='none')), r, progress=False)
    assert (r/'checkpoints/last.pt').exists() and not (r/'checkpoints/best.pt').exists()
    p = cli('sample', r, '--n', 1, '--steps', 1, '--weights', 'best', '--no-progress')
    one_line_error(p, 'best.pt', 'not found', '--weights ema or last')
    assert not (r/'samples').exists()

# best_by=fid: every slice (36 training, 12 validation ones: the validation set is the reference), 16 samples of 3 steps
FID = dict(BASE, foreground_only=False, best_by='fid', best_samples=16, sample_steps=3, best_encoder_steps=20, epochs=3)

def _state(ck):
    "What training made and will draw next: weights, EMA, optimiser, the noise generator and every global RNG."
    c = load_checkpoint(ck)
    return c['model'], c['ema'], c['opt'], c['gen'], c['tsampler'], c['rng']

def _equal(a, b):
    "Two (nested) checkpoint states hold the same values, tensors compared exactly."
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b

def _stamp(f):
    return file_sha256(f), f.stat().st_ino, f.stat().st_mtime_ns

def _three_then_wrecked(cfg:dict, r):
    "Train `cfg` 3 epochs into `r`, then resume a 4th at a learning rate that wrecks the network; states after each."
    train(make_config(cfg), r, progress=False)
    three = _state(r/'checkpoints/last.pt'), load_checkpoint(r/'checkpoints/last.pt')['best']
    enc = r/'checkpoints/fid_encoder.pt'
    stamp = _stamp(enc) if enc.exists() else None
    train(make_config(dict(cfg, epochs=4, lr=0.3)), r, resume=True, force=True, progress=False)
    return three, stamp, _state(r/'checkpoints/last.pt')

@pytest.fixture(scope='module')
def fid_run(phantoms, tmp_path_factory):
    "A best_by=fid run (3 epochs, then a wrecked 4th) and the same run with best_by=valid_loss."
    d = tmp_path_factory.mktemp('fid')
    fid = _three_then_wrecked(dict(FID, data=str(phantoms/'sub')), d/'fid')
    plain = {k: v for k, v in FID.items() if not k.startswith('best_')}
    loss = _three_then_wrecked(dict(plain, data=str(phantoms/'sub')), d/'loss')
    return d/'fid', make_config(dict(FID, data=str(phantoms/'sub'))), fid, loss

def test_fid_best_is_the_epoch_with_the_lowest_fid(fid_run):
    r, *_ = fid_run
    h = pd.read_csv(r/'logs/history.csv')
    assert len(h) == 4 and h.fid.notna().all() and h.fid.nunique() == 4, h  # measured every epoch (best_every 1)
    best = load_checkpoint(r/'checkpoints/best.pt')
    assert best['epoch'] == int(h.epoch[h.fid.idxmin()]) + 1 and best['fid'] == h.fid.min(), (best['epoch'], h)
    assert 'valid_loss' not in best

def _ema_net(cfg, ck):
    from medsynth.training.data import mode_of
    from medsynth.training.network import build_model
    net = build_model(cfg, mode_of(cfg))
    net.load_state_dict({k.removeprefix('ema_model.'): v for k, v in load_checkpoint(ck)['ema'].items()
                         if k.startswith('ema_model.')})
    return net.eval()

def test_the_recorded_fid_is_exact(fid_run):
    """best.pt's EMA network, sampled again with the run's seed and conditioning, has the recorded FID in the saved
    encoder."""
    from medsynth.models.domain import load_encoder, frechet_distance
    from medsynth.training.data import build_datasets
    from medsynth.training.quality import fid_reference, fid_samples, fid_features
    r, cfg, *_ = fid_run
    ref = fid_reference(cfg, *build_datasets(cfg)[:2])
    enc = load_encoder(r/'checkpoints/fid_encoder.pt')
    fid = lambda ck: frechet_distance(fid_features(enc, ref[0]), fid_features(enc, fid_samples(_ema_net(cfg, ck), cfg,
                                                                                               ref, cfg.best_samples)))
    best = load_checkpoint(r/'checkpoints/best.pt')
    assert math.isclose(fid(r/'checkpoints/best.pt'), best['fid'], rel_tol=1e-9, abs_tol=0)
    h = pd.read_csv(r/'logs/history.csv')
    assert math.isclose(fid(r/'checkpoints/last.pt'), h.fid.iloc[-1], rel_tol=1e-9, abs_tol=0)   # epoch 4's, another
    # `--weights best` samples the network the FID was measured on: best.pt's EMA
    _, net, _, _ = load_run(r, 'best')
    ema = _ema_net(cfg, r/'checkpoints/best.pt')
    assert all(torch.equal(v.cpu(), ema.state_dict()[k]) for k, v in net.state_dict().items())

def test_measuring_fid_does_not_change_training(fid_run):
    "With best_by=fid a run's weights, EMA and optimiser are those of best_by=valid_loss, also after a resume."
    _, _, (fid3, _, fid4), (loss3, _, loss4) = fid_run
    assert _equal(fid3[0], loss3[0]) and _equal(fid4, loss4)
    assert not _equal(fid3[0][0], fid4[0])                        # the states compared are not all one

def test_fid_resume_keeps_the_best_and_the_encoder(fid_run):
    r, _, fid, loss = fid_run
    ((_, best3), stamp, _), ((_, loss_best3), _, _) = fid, loss
    h = pd.read_csv(r/'logs/history.csv')
    assert best3 == dict(fid=h.fid.iloc[:3].min(), epoch=int(h.fid.iloc[:3].idxmin()) + 1)
    assert h.fid.iloc[3] > best3['fid']                            # the wrecked 4th epoch samples worse than the best
    last, best = load_checkpoint(r/'checkpoints/last.pt'), load_checkpoint(r/'checkpoints/best.pt')
    assert last['epoch'] == 4 and last['best'] == best3 and best['epoch'] == best3['epoch']
    assert _stamp(r/'checkpoints/fid_encoder.pt') == stamp        # loaded by the resumed run, not trained again
    assert set(loss_best3) == {'valid_loss', 'epoch'}              # best_by=valid_loss keeps its form

def test_fid_every_other_epoch(phantoms, tmp_path):
    "best_every=2 measures epochs 2 and 4 only; an epoch without a measurement never becomes the best."
    train(make_config(dict(FID, data=str(phantoms/'sub'), epochs=4, best_every=2)), tmp_path/'r', progress=False)
    h = pd.read_csv(tmp_path/'r/logs/history.csv')
    assert h.fid.notna().tolist() == [False, True, False, True], h
    best = load_checkpoint(tmp_path/'r/checkpoints/best.pt')
    assert best['epoch'] == int(h.epoch[h.fid.idxmin()]) + 1 and best['fid'] == h.fid.min()

@pytest.mark.parametrize('kw,parts', [
    (dict(best_every=2), ('best_every=2', 'best_by=valid_loss: set best_by=fid or drop best_every')),
    (dict(best_by='none', best_samples=8), ('best_samples=8', 'set best_by=fid or drop best_samples')),
    (dict(best_encoder='enc.pt'), ('best_encoder=', 'set best_by=fid or drop best_encoder')),
    (dict(best_by='fid', best_samples=1), ('best_samples=1 is not allowed: it must be an integer >= 2',)),
    (dict(best_by='fid', dims=3, size=[16, 16, 16]), ('best_by=fid measures 2D images', 'set best_by=valid_loss')),
])
def test_fid_config_errors_are_one_line(kw, parts, tmp_path):
    with pytest.raises(ValueError) as e:
        make_config(dict(BASE, **kw))
    assert all(p in str(e.value) for p in parts) and '\n' not in str(e.value), str(e.value)
    p = cli('train', *[f'{k}={v}'.replace(' ', '') for k, v in dict(BASE, data='x', **kw).items()], '--run',
            tmp_path/'r', '--no-progress')
    one_line_error(p, *parts)
    assert not (tmp_path/'r').exists()

def test_a_missing_best_encoder_is_one_line(phantoms, tmp_path):
    kw = dict(FID, data=phantoms/'sub', best_encoder=tmp_path/'nope.pt', epochs=1)
    p = cli('train', *[f'{k}={v}'.replace(' ', '') for k, v in kw.items()], '--run', tmp_path/'r', '--no-progress')
    one_line_error(p, f'{tmp_path/"nope.pt"}: best_encoder not found', 'best_encoder=null')
    assert not (tmp_path/'r').exists()

def test_train_help_lists_the_fid_keys():
    p = cli('train', '--help')
    assert p.returncode == 0, p.stderr
    for k, words in dict(best_by='valid_loss or fid', best_every='epochs between measurements',
                         best_samples='EMA samples per measurement', best_encoder='domain encoder.pt',
                         best_encoder_steps='training steps of that encoder').items():
        assert any(l.split()[:1] == [k] and words in l for l in p.stdout.splitlines()), (k, p.stdout)
