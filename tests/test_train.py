"""Training end to end: every mode and strategy (2D and 3D) lowers the loss; resume after SIGKILL ends with the
weights of an uninterrupted run; DDP on 2 CPU processes equals one process on the doubled batch; the CLI's
train / sample paths and their bad input."""
import csv, json, os, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd, pytest, torch
from conftest import tool, ROOT, cli
from medsynth.training.config import make_config
from medsynth.training.learner import train
from medsynth.training.checkpoint import load_checkpoint

TINY = dict(channels=[16, 32], attention_levels=[False, True], num_head_channels=16, batch_size=4, epochs=4, ema_after=0, lr=3e-3)

@pytest.fixture(scope='module')
def data(phantoms): return phantoms

CASES = [(m, s, 2) for m in ('uncond', 'class', 'seg', 'bravo', 'dual', 'translate') for s in ('ddpm', 'rflow')] + \
        [('bravo', 'ddpm', 3), ('dual', 'rflow', 3), ('seg', 'ddpm', 3)]

def fixed_loss(cfg, weights=None, n=16):
    "Unweighted diffusion loss on `n` training samples at fixed times and noise: initial (weights=None) or trained network."
    from torch.utils.data import default_collate
    from medsynth.training.data import build_datasets, mode_of
    from medsynth.training.network import build_model
    from medsynth.training.generation import schedule_of
    from medsynth.diffusion.objectives import UniformSampler, diffusion_loss
    tr, _, classes = build_datasets(cfg); mode, sch = mode_of(cfg), schedule_of(cfg)
    net = build_model(cfg, mode, len(classes) if classes else None).eval()
    if weights is not None: net.load_state_dict(weights)
    x0, cond, label = mode.split(default_collate([tr[i % len(tr)] for i in range(n)]))
    g = torch.Generator().manual_seed(123); t, _ = UniformSampler(sch).sample(n, generator=g); eps = torch.randn(x0.shape, generator=g)
    with torch.no_grad(): out = net(sch.add_noise(x0, eps, t), sch.model_t(t), cond=cond, label=label)
    return diffusion_loss(out, x0, eps, t, sch, cfg.prediction)[0].item()

@pytest.mark.parametrize('mode,strategy,dims', CASES, ids=[f'{m}-{s}-{d}d' for m, s, d in CASES])
def test_every_mode_and_strategy_lowers_the_loss(data, tmp_path, mode, strategy, dims):
    "Trained vs initial network on the same samples, times and noise (epoch means of a few 3D volumes are too noisy to compare)."
    src = data/'cls' if mode in ('uncond', 'class') else data/'sub'
    cfg = make_config(dict(TINY, data=str(src), mode=mode, strategy=strategy, dims=dims, size=[16, 16] if dims == 2 else [16, 16, 8],
                           prediction='eps' if mode == 'seg' else 'v', batch_size=4 if dims == 2 else 1))
    train(cfg, tmp_path/'run', progress=False)
    assert len(pd.read_csv(tmp_path/'run/logs/history.csv')) == 4
    before, after = fixed_loss(cfg), fixed_loss(cfg, load_checkpoint(tmp_path/'run/checkpoints/last.pt')['model'])
    # after / before, seeds 0-4 (seed=s in the config; the test runs seed 0); untrained 1.0. 2D: uncond 0.38-0.57, class 0.36-0.56,
    # seg 0.04-0.15, bravo 0.32-0.55, dual 0.47-0.58, translate 0.21-0.38; 3D: bravo-ddpm 0.57-0.63, dual-rflow 0.66-0.70, seg-ddpm 0.24-0.33
    assert after < 0.8 * before, (before, after)

def _train_cli(*args, **kw):
    return subprocess.Popen([tool('medsynth'), 'train', *map(str, args), '--no-progress'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)

def test_resume_after_sigkill_is_exact(data, tmp_path):
    args = [f'data={data/"sub"}', 'mode=dual', 'epochs=6', 'size=[16,16]', 'channels=[16,32]', 'attention_levels=[false,true]',
            'num_head_channels=16', 'batch_size=4', 'ema_after=0', 'timestep_sampler=loss_aware']
    full = _train_cli(*args, '--run', tmp_path/'full'); assert full.wait(600) == 0, full.stderr.read()
    p = _train_cli(*args, '--run', tmp_path/'cut'); ck = tmp_path/'cut/checkpoints/last.pt'
    deadline = time.time() + 300
    while time.time() < deadline and not (ck.exists() and load_checkpoint(ck)['epoch'] >= 2): time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    killed_at = load_checkpoint(ck)['epoch']
    assert 2 <= killed_at < 6, killed_at                       # killed mid-run, with a readable checkpoint
    r = _train_cli(*args, '--run', tmp_path/'cut', '--resume'); assert r.wait(600) == 0, r.stderr.read()
    a, b = load_checkpoint(tmp_path/'full/checkpoints/last.pt'), load_checkpoint(ck)
    for k in ('model', 'ema', 'opt'):
        fa, fb = a[k], b[k]
        if k == 'opt': fa, fb = {str(i): v for i, v in enumerate(fa['state'].values())}, {str(i): v for i, v in enumerate(fb['state'].values())}
        for n in fa:
            for x, y in (zip(fa[n].values(), fb[n].values()) if isinstance(fa[n], dict) else [(fa[n], fb[n])]): assert torch.equal(x, y), (k, n)
    assert a['tsampler'].keys() == b['tsampler'].keys() and all(torch.equal(a['tsampler'][k], b['tsampler'][k]) for k in a['tsampler'])
    ha, hb = pd.read_csv(tmp_path/'full/logs/history.csv'), pd.read_csv(tmp_path/'cut/logs/history.csv')
    assert list(hb.epoch) == list(range(6)) and (ha.train_loss.values == hb.train_loss.values).all()

def test_ddp_two_processes_equal_one_process_on_the_doubled_batch(data, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    torchrun = str(Path(sys.executable).parent/'torchrun')
    r = subprocess.run([torchrun, '--nproc_per_node', '2', '--master_port', '29531', str(ROOT/'tests/ddp_train.py'), str(data/'sub'), str(tmp_path), '2'],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for seed in ('0', '1'):                                    # seed 1: a control that sees other noise and batches
        r = subprocess.run([sys.executable, str(ROOT/'tests/ddp_train.py'), str(data/'sub'), str(tmp_path), '4', seed], capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    r0, r1, one, other = (torch.load(tmp_path/f, weights_only=True) for f in ('world2-rank0-seed0.pt', 'world2-rank1-seed0.pt', 'world1-rank0-seed0.pt', 'world1-rank0-seed1.pt'))
    assert r0['steps'] == one['steps'] > 0
    for k in r0['model']: assert torch.equal(r0['model'][k], r1['model'][k]), k           # both ranks: identical weights
    # The first step's averaged gradient equals one process's gradient on the doubled batch (same samples, same noise):
    for k in one['grads']: torch.testing.assert_close(r0['grads'][k], one['grads'][k], rtol=1e-4, atol=1e-6)
    # After many AdamW steps the weights agree up to float summation order, which Adam amplifies for near-zero
    # gradients (an update of about lr either way): far below what other batches and noise give (the seed-1 control).
    diff = max((r0['model'][k] - one['model'][k]).abs().max().item() for k in r0['model'])
    control = max((other['model'][k] - one['model'][k]).abs().max().item() for k in r0['model'])
    assert control > 50 * diff, (diff, control)
    for k in r0['tsampler']: torch.testing.assert_close(r0['tsampler'][k], one['tsampler'][k], rtol=1e-3, atol=1e-6)

@pytest.fixture(scope='module')
def run(data, tmp_path_factory):
    r = tmp_path_factory.mktemp('runs')/'bravo'
    out = cli('train', f'data={data/"sub"}', 'epochs=1', 'size=[16,16]', 'channels=[16,32]', 'attention_levels=[false,true]', 'num_head_channels=16',
              'batch_size=4', '--run', r, '--no-progress')
    assert out.returncode == 0, out.stderr
    return r

def test_sample_writes_files_and_manifest(run, tmp_path):
    r = cli('sample', run, '--n', 3, '--steps', 4, '--out', tmp_path/'s', '--no-progress')
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path/'s/manifest.csv')))
    # per sample: the generated image, the mask it was generated from and the real image of that mask (for paired metrics)
    assert len(rows) == 9 and {'file', 'key', 'checkpoint', 'seed', 'sampler', 'steps', 'conditioning'} <= set(rows[0])
    assert sorted(r['key'] for r in rows) == sorted(['t1ce', 'cond-mask', 'real-t1ce'] * 3), [r['key'] for r in rows]
    assert all((tmp_path/'s'/row['file']).exists() for row in rows) and rows[0]['sampler'] == 'dpmpp_2m' and rows[0]['steps'] == '4'

def test_malicious_checkpoint_is_refused(run, tmp_path):
    import shutil
    bad = tmp_path/'bad'; shutil.copytree(run, bad)
    marker = tmp_path/'pwned'
    class Evil:
        def __reduce__(self): return (os.system, (f'touch {marker}',))
    torch.save(dict(config={}, ema=Evil()), bad/'checkpoints/last.pt')
    r = cli('sample', bad, '--n', 1, '--steps', 2)
    assert r.returncode == 2 and 'refused: it holds Python objects' in r.stderr and r.stderr.count('\n') == 1, r.stderr
    assert not marker.exists()

@pytest.mark.parametrize('args,message', [
    (['lerning_rate=0.1'], "unknown key 'lerning_rate'"),
    (['epoch=3'], "did you mean 'epochs'"),
    (['size=[30,30]'], 'size=[30, 30] is not divisible by 4'),
    (['mode=bravo', 'DATA_CLS'], "'mask' but"),
    (['size=[16,16,16]'], 'has 3 axes but dims=2'),
])
def test_train_bad_input_is_one_line(data, tmp_path, args, message):
    args = [a.replace('DATA_CLS', f'data={data/"cls"}') for a in args]
    if not any(a.startswith('data=') for a in args): args.append(f'data={data/"sub"}')
    r = cli('train', *args, '--run', tmp_path/'r')
    assert r.returncode == 2 and message in r.stderr and r.stderr.count('\n') == 1 and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path/'r').exists()

def test_existing_run_and_changed_config_are_refused(run, data):
    base = [f'data={data/"sub"}', 'epochs=1', 'size=[16,16]', 'channels=[16,32]', 'attention_levels=[false,true]', 'num_head_channels=16', 'batch_size=4']
    r = cli('train', *base, '--run', run)
    assert r.returncode == 2 and 'run folder exists' in r.stderr
    r = cli('train', *base, 'lr=0.5', '--run', run, '--resume')
    assert r.returncode == 2 and "config differs from the run's (lr: 0.001 -> 0.5)" in r.stderr

def test_demo_short(tmp_path):
    "`medsynth demo` end to end with a short budget: the run folder holds what the README promises."
    r = cli('demo', '--minutes', '0.2', '--out', tmp_path/'demo')
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ('samples.png', 'loss.png', 'metrics.json', 'report.md', 'run/checkpoints/last.pt', 'run/logs/history.csv'): assert (tmp_path/'demo'/f).exists(), f
    m = json.loads((tmp_path/'demo/metrics.json').read_text())
    assert m['closer_than_untrained']['intensity_w1'] and m['closer_than_untrained']['background_error'], m
    assert '[1/4]' in r.stdout and '[4/4]' in r.stdout
    assert cli('demo', '--out', tmp_path/'demo').returncode == 2        # an existing folder is refused

def test_lr_find(data, tmp_path):
    r = cli('train', f'data={data/"sub"}', 'epochs=1', 'size=[16,16]', 'channels=[16,32]', 'attention_levels=[false,true]', 'num_head_channels=16',
            'batch_size=4', '--run', tmp_path/'lr', '--lr-find')
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])['valley'] > 0 and (tmp_path/'lr/lr_find.png').stat().st_size > 5_000
    assert not (tmp_path/'lr/checkpoints/last.pt').exists()          # the finder trains nothing that could be resumed

def test_wandb_offline_run(data, tmp_path):
    r = cli('train', f'data={data/"sub"}', 'epochs=1', 'size=[16,16]', 'channels=[16,32]', 'attention_levels=[false,true]', 'num_head_channels=16',
            'batch_size=4', 'wandb=true', '--run', tmp_path/'w', '--no-progress')
    assert r.returncode == 0, r.stderr[-2000:]
    assert list((tmp_path/'w/wandb').glob('offline-run-*/run-*.wandb'))

def test_wandb_without_the_package_is_a_clear_error(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'wandb' else real(name, *a))
    with pytest.raises(ValueError, match='wandb=true needs the wandb package: pip install wandb'): make_config(dict(wandb=True))
