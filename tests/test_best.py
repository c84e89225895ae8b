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
