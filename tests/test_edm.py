"""EDM preconditioning (`prediction=edm`) end to end: the network sees EDM's $(c_\\text{in} y, c_\\text{noise})$ in
training as in sampling, so a short run lowers EDM's loss; one epoch then a resume to two equals two uninterrupted epochs
bit for bit; `medsynth sample` samples the run, with Karras et al.'s churn in heun (`--churn`, `--s-noise`)."""
import csv
import torch
from conftest import cli, one_line_error
from medsynth.training.config import make_config
from medsynth.training.learner import train
from medsynth.training.checkpoint import load_checkpoint

TINY = dict(channels=[16, 32], attention_levels=[False, True], num_head_channels=16, batch_size=4, ema_after=0, lr=3e-3,
            size=[16, 16], mode='bravo', prediction='edm', weighting='edm', timestep_sampler='log_normal',
            lr_schedule='constant')

def edm_loss(cfg, weights=None, n=16):
    "EDM's loss (the MSE of F, weight 1) on `n` training samples at fixed levels and noise, through `net_inputs`."
    from torch.utils.data import default_collate
    from medsynth.training.data import build_datasets, mode_of
    from medsynth.training.network import build_model
    from medsynth.training.generation import schedule_of
    from medsynth.diffusion.objectives import LogNormalSampler, diffusion_loss
    from medsynth.diffusion.param import net_inputs
    tr, _, _ = build_datasets(cfg); mode, sch = mode_of(cfg), schedule_of(cfg)
    net = build_model(cfg, mode).eval()
    if weights is not None: net.load_state_dict(weights)
    x0, cond, label = mode.split(default_collate([tr[i % len(tr)] for i in range(n)]))
    g = torch.Generator().manual_seed(123); t, _ = LogNormalSampler(sch).sample(n, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        out = net(*net_inputs(sch.add_noise(x0, eps, t), t, sch, 'edm', cfg.sigma_data), cond=cond, label=label)
    return diffusion_loss(out, x0, eps, t, sch, 'edm', 'edm', sigma_data=cfg.sigma_data)[0].item()

def test_edm_trains_resumes_exactly_and_samples(phantoms, tmp_path):
    base = dict(TINY, data=str(phantoms/'sub'))
    train(make_config(dict(base, epochs=2)), tmp_path/'full', progress=False)
    train(make_config(dict(base, epochs=1)), tmp_path/'cut', progress=False)
    train(make_config(dict(base, epochs=2)), tmp_path/'cut', resume=True, progress=False)
    a, b = load_checkpoint(tmp_path/'full/checkpoints/last.pt'), load_checkpoint(tmp_path/'cut/checkpoints/last.pt')
    assert a['epoch'] == b['epoch'] == 2
    for k in ('model', 'ema'):
        assert a[k].keys() == b[k].keys()
        for n in a[k]: assert torch.equal(a[k][n], b[k][n]), (k, n)
    cfg = make_config(dict(base, epochs=2))
    before, after = edm_loss(cfg), edm_loss(cfg, a['model'])
    print(f"EDM loss on fixed samples: initial {before:.3f}, after 2 epochs {after:.3f}")
    assert after < 0.8 * before, (before, after)
    r = cli('sample', tmp_path/'cut', '--n', 2, '--steps', 3, '--sampler', 'heun', '--out', tmp_path/'s', '--no-progress')
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((tmp_path/'s').rglob('*.png'))) >= 2

def test_cli_churn_reaches_the_heun_sampler(phantoms, tmp_path):
    "`medsynth sample --churn`: Karras et al.'s noise changes heun's samples, reproducibly per seed; other samplers refuse it."
    train(make_config(dict(TINY, data=str(phantoms/'sub'), epochs=1)), tmp_path/'run', progress=False)
    args = ('sample', tmp_path/'run', '--n', 2, '--steps', 3, '--sampler', 'heun', '--no-progress')
    for extra in ([], ['--churn', 10], ['--churn', 10, '--out', tmp_path/'again'], ['--churn', 10, '--s-noise', 0.5]):
        r = cli(*args, *extra)
        assert r.returncode == 0, r.stderr[-2000:]
    plain, churned = tmp_path/'run/samples/heun-3-seed0', tmp_path/'run/samples/heun-3-seed0-churn10-s_noise1'
    half = tmp_path/'run/samples/heun-3-seed0-churn10-s_noise0.5'
    png = lambda d: [f.read_bytes() for f in sorted(d.glob('*_t1ce.png'))]
    assert len(png(plain)) == 2 and png(churned) == png(tmp_path/'again')      # the seed decides the added noise
    assert png(churned) != png(plain) and png(half) != png(churned)
    rows = list(csv.DictReader(open(churned/'manifest.csv')))
    assert {(r['churn'], r['s_noise']) for r in rows} == {('10.0', '1.0')} and 'churn' not in open(plain/'manifest.csv').readline()
    one_line_error(cli('sample', tmp_path/'run', '--n', 1, '--churn', 1, '--out', tmp_path/'x'), 'add --sampler heun')
    r = cli(*args, '--s-noise', 0)
    assert r.returncode == 2 and '--s-noise' in r.stderr
