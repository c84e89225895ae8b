"""M2D end to end: REPA is non-zero, reaches the UNet and falls in training; REPA-E's VAE step and diffusion step each
change only their own network; a REPA-E run resumes exactly (the tuned VAE and its optimiser are checkpointed); bad
input as one-line errors; generation from references, image to image and interpolation on a trained run; the paper
through papermill with tiny parameters."""
import csv, dataclasses, json
import pandas as pd, pytest, torch
from fastai.callback.core import Callback, CancelFitException
from conftest import cli, latent_testbed
from medsynth.evaluation.sets import read_set
from medsynth.spaces.vae import save_autoencoder, load_autoencoder, build_discriminator
from medsynth.models.repa import RepaECB
from medsynth.training.config import make_config
from medsynth.training.learner import train, build_learner
from medsynth.training.data import build_datasets, build_dataloaders, encoder_of, space_of
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.generation import generate
from medsynth.training.runs import load_run

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def m2d(tmp_path_factory):
    "7-class phantom class folders (32 px), a domain encoder trained on their labels and a tiny VAE (factor 2: 16 x 16 latents)."
    return latent_testbed(tmp_path_factory.mktemp('m2d'), k=7, n=56, steps=30, batch_size=32, ae_batch_size=16, lr=3e-3)

def base(d, **kw):
    return dict(dict(data=str(d/'cls'), mode='class', image='image', size=[32, 32], channels=[8, 16], attention_levels=[False, True], num_head_channels=8,
                     batch_size=8, lr=3e-3, ema_after=0, autoencoder=str(d/'autoencoder.pt'), encoder='domain', encoder_weights=str(d/'encoder.pt'),
                     fusion='xattn', fusion_dim=8, repa=0.5, sampler='ddim', sample_steps=4, seed=0), **kw)

@pytest.fixture(scope='module')
def trained(m2d, tmp_path_factory):
    "A fusion + REPA latent run, trained for 5 epochs."
    run = tmp_path_factory.mktemp('run')/'repa'
    train(make_config(base(m2d, epochs=5)), run, progress=False)
    return run

# 1. REPA
def test_repa_is_nonzero_reaches_the_unet_and_falls(m2d, trained):
    from medsynth.training.data import mode_of
    from medsynth.training.network import build_model
    from medsynth.models.repa import repa_loss
    cfg = make_config(base(m2d, epochs=1)); tr, _, classes = build_datasets(cfg)
    net = build_model(cfg, mode_of(cfg), len(classes)); enc = encoder_of(cfg)
    x = torch.stack([tr[i]['image'] for i in range(4)]).float(); tok = enc(x)
    z = space_of(cfg).encode(x)
    net(z, torch.full((4,), 500.), label=torch.zeros(4, dtype=torch.long), features=tok.tokens)
    r = repa_loss(net.repa_out, tok.tokens, tok.grid); r.backward()
    assert abs(r.item()) > 1e-3                                                   # not the always-zero REPA of the published code
    unet_grads = [p.grad.abs().sum().item() for n, p in net.named_parameters() if n.startswith('unet.down_blocks.0') and p.grad is not None]
    assert unet_grads and max(unet_grads) > 0                                     # it reaches the UNet below the aligned block, not only the projector
    h = pd.read_csv(trained/'logs'/'history.csv')
    assert len(h) == 5 and (h.repa < 0).all() and h.repa.iloc[0] > h.repa.iloc[-1] + 0.02, h.repa.tolist()   # drop over 5 epochs, seeds 0-4: 0.14-0.18

# 2. REPA-E: each step changes only its own network
def _snap(m): return {n: p.detach().clone() for n, p in m.named_parameters()}
def _same(a, b): return all(torch.equal(a[n], b[n]) for n in a)
def _changed(a, b): return any(not torch.equal(a[n], b[n]) for n in a)

def test_repa_e_steps_are_isolated(m2d, tmp_path):
    cfg = make_config(base(m2d, epochs=1, repa_e=True, vae_lr=1e-3, valid_frac=0.5))
    tr, va, classes = build_datasets(cfg); (tmp_path/'run'/'logs').mkdir(parents=True)
    learn = build_learner(cfg, tmp_path/'run', build_dataloaders(tr, va, cfg), classes, progress=False)
    unet, vae, log = learn.net, learn.space.model, []
    assert learn.space is not space_of(cfg)                                       # the run tunes its own copy
    class Start(Callback):
        order = -6
        def before_batch(self):
            if self.training: self.s0 = (_snap(unet), _snap(vae))
        def after_backward(self):
            g = [p.grad for p in vae.parameters()]
            log.append(('vae grads after the diffusion backward untouched', all((a is None and b is None) or (a is not None and b is not None and torch.equal(a, b)) for a, b in zip(g, mid.g))))
        def after_step(self):
            u, v = _snap(unet), _snap(vae)
            log.extend([('diffusion step changed the UNet', _changed(mid.s[0], u)), ('diffusion step left the VAE', _same(mid.s[1], v))])
    class Mid(Callback):
        order = -3.5                                                              # after RepaECB (-4), before the diffusion forward
        def before_batch(self):
            if not self.training: return
            self.s = (_snap(unet), _snap(vae)); self.g = [None if p.grad is None else p.grad.clone() for p in vae.parameters()]
            log.extend([('VAE step changed the VAE', _changed(start.s0[1], self.s[1])), ('VAE step left the UNet', _same(start.s0[0], self.s[0])),
                        ('VAE step left no UNet gradient', all(p.grad is None or not p.grad.any() for p in unet.parameters()))])
    start, mid = Start(), Mid()
    learn.add_cbs([start, mid])
    learn.fit(1, cfg.lr)
    assert len(log) == 6 * len(learn.dls.train) >= 12, log
    bad = [k for k, ok in log if not ok]
    assert not bad, bad

# 3. REPA-E resume
def test_repa_e_resume_is_exact(m2d, tmp_path):
    cfg = base(m2d, epochs=2, repa_e=True, vae_lr=1e-3)
    train(make_config(cfg), tmp_path/'full', progress=False)
    out = train(make_config(dict(cfg, max_minutes=0)), tmp_path/'cut', progress=False)
    assert out['stopped_early'] and load_checkpoint(tmp_path/'cut'/'checkpoints'/'last.pt')['epoch'] == 1
    train(make_config(cfg), tmp_path/'cut', resume=True, progress=False)
    a, b = (load_checkpoint(tmp_path/r/'checkpoints'/'last.pt') for r in ('full', 'cut'))
    assert a['epoch'] == b['epoch'] == 2
    for k in ('model', 'ema'): assert all(torch.equal(a[k][n], b[k][n]) for n in a[k]), k
    assert all(torch.equal(a['repa_e']['vae'][n], b['repa_e']['vae'][n]) for n in a['repa_e']['vae'])
    assert not all(torch.equal(a['repa_e']['vae'][n], v) for n, v in torch.load(m2d/'autoencoder.pt')['state_dict'].items())   # it was tuned
    va, vb = (torch.load(tmp_path/r/'autoencoder.pt')['state_dict'] for r in ('full', 'cut'))
    assert all(torch.equal(va[n], vb[n]) for n in va)

# 3b. REPA-E trains the autoencoder with its own full loss
def _full_loss_autoencoder(m2d, path):
    "The fixture's autoencoder, its config asking for a perceptual (domain encoder) and an adversarial term."
    sp = load_autoencoder(m2d/'autoencoder.pt')
    ac = dataclasses.replace(sp.config, perceptual='encoder', perceptual_weight=0.5, adversarial_weight=0.1, disc_layers=1)
    return save_autoencoder(sp.model, ac, sp.scale, path)

def test_repa_e_uses_the_autoencoders_full_loss(m2d, tmp_path):
    "Every configured term of the VAE step is in its loss (the formula written out) and sends gradient into the VAE."
    ae = _full_loss_autoencoder(m2d, tmp_path/'ae.pt')
    r = cli('train', f'data={m2d/"cls"}', 'mode=class', 'image=image', 'size=[32,32]', 'channels=[8,16]', 'attention_levels=[false,false]',
            'num_head_channels=8', 'batch_size=8', 'epochs=1', 'encoder=domain', f'encoder_weights={m2d/"encoder.pt"}', 'fusion=xattn',
            'repa=0.5', 'repa_e=true', f'autoencoder={ae}', '--run', tmp_path/'r', '--no-progress')
    assert r.returncode == 2 and 'set vae_perceptual_weights to a domain encoder.pt' in r.stderr and r.stderr.count('\n') == 1, r.stderr
    assert not (tmp_path/'r').exists()                                            # nothing written
    cfg = make_config(base(m2d, epochs=1, repa_e=True, repa_vae=1.5, autoencoder=str(ae), vae_perceptual_weights=str(m2d/'encoder.pt')))
    tr, va, classes = build_datasets(cfg); (tmp_path/'run'/'logs').mkdir(parents=True)
    learn = build_learner(cfg, tmp_path/'run', build_dataloaders(tr, va, cfg), classes, progress=False)
    ecb = next(c for c in learn.cbs if isinstance(c, RepaECB))
    assert ecb.weight == 1.5 and ecb.perceptual is not None and ecb.disc is not None   # separate weights; every term's network
    got = {}
    class Probe(Callback):
        order = -4.5                                                              # the batch is built, the VAE step not yet taken
        def before_batch(self):
            if not self.training: return
            ac, params = ecb.space.config, [p for p in ecb.space.model.parameters()]
            ecb.space.model.train()
            terms, _ = ecb.vae_loss(self.learn.dcb.pixels, self.learn.yb[1], self.learn.yb[2])
            w = dict(recon=1., kl=ac.kl_weight, perceptual=ac.perceptual_weight, adversarial=ac.adversarial_weight, repa=1.5)
            got['formula'] = (terms['loss'].item(), sum(w[k] * terms[k] for k in w).item())
            for k in w:
                g = torch.autograd.grad(w[k] * terms[k], params, retain_graph=True, allow_unused=True)
                got[k] = sum(float(x.abs().sum()) for x in g if x is not None)
            raise CancelFitException
    learn.add_cb(Probe())
    learn.fit(1, cfg.lr)
    assert abs(got['formula'][0] - got['formula'][1]) < 1e-5 * abs(got['formula'][1]), got
    assert all(got[k] > 0 for k in ('recon', 'kl', 'perceptual', 'adversarial', 'repa')), got

def test_repa_e_trains_and_checkpoints_the_discriminator(m2d, tmp_path):
    ae = _full_loss_autoencoder(m2d, tmp_path/'ae.pt')
    cfg = make_config(base(m2d, epochs=1, repa_e=True, autoencoder=str(ae), vae_perceptual_weights=str(m2d/'encoder.pt')))
    train(cfg, tmp_path/'run', progress=False)
    ck = load_checkpoint(tmp_path/'run'/'checkpoints'/'last.pt')['repa_e']
    assert {'vae', 'opt', 'disc', 'opt_d'} <= set(ck)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed); d0 = build_discriminator(load_autoencoder(ae).config).state_dict()
    assert any(not torch.equal(d0[n], ck['disc'][n]) for n in d0 if d0[n].is_floating_point())    # it took its steps

# 4. bad input
@pytest.mark.parametrize('args,message', [
    (['encoder=panderm', 'fusion=xattn'], 'the PanDerm encoder needs its weights file and none was given'),
    (['encoder=panderm', 'encoder_weights=/nonexistent/panderm.pth', 'fusion=xattn'], '/nonexistent/panderm.pth: PanDerm weights not found'),
    (['encoder=domain', 'encoder_weights=/nonexistent/encoder.pt', 'fusion=xattn'], '/nonexistent/encoder.pt: domain encoder weights not found'),
    (['fusion=xattn'], 'fusion needs encoder features'),
    (['encoder=domain', 'encoder_weights=ENC', 'fusion=xattn', 'repa=0.5', 'repa_e=true'], 'repa_e=true tunes the autoencoder through REPA: set autoencoder=FILE'),
], ids=['panderm-no-weights', 'panderm-missing-file', 'domain-missing-file', 'fusion-no-encoder', 'repa_e-no-autoencoder'])
def test_bad_m2d_config_is_one_line(m2d, tmp_path, args, message):
    args = [a.replace('ENC', str(m2d/'encoder.pt')) for a in args]
    r = cli('train', f'data={m2d/"cls"}', 'mode=class', 'image=image', 'size=[32,32]', 'channels=[8,16]', 'attention_levels=[false,false]',
            'num_head_channels=8', 'batch_size=8', 'epochs=1', *args, '--run', tmp_path/'r', '--no-progress')
    assert r.returncode == 2 and message in r.stderr and r.stderr.count('\n') == 1, r.stderr
    assert not (tmp_path/'r').exists()

def test_bad_generation_input_is_one_line(trained, tmp_path):
    from medsynth.systems.m2d import from_references, img2img, read_references
    cfg, net, _, _ = load_run(trained)
    with pytest.raises(ValueError, match=r'fuses 16-wide encoder features .* got \(2, 4, 5\): use the encoder it was trained with') as e:
        from_references(net, cfg, torch.randn(2, 4, 5), 2, label=0)
    assert '\n' not in str(e.value)
    with pytest.raises(ValueError, match=r'strength=1.5 is not allowed: it must be in \[0, 1\]'): img2img(net, cfg, torch.zeros(1, 1, 32, 32), 1.5)
    with pytest.raises(ValueError, match=r'strength=-0.1 is not allowed'): img2img(net, cfg, torch.zeros(1, 1, 32, 32), -0.1)
    (tmp_path/'empty').mkdir()
    with pytest.raises(ValueError, match='empty: holds no images'): read_references(tmp_path/'empty', (32, 32))
    with pytest.raises(ValueError, match='reference folder not found'): read_references(tmp_path/'nope', (32, 32))

# 5. generation on a trained run
def test_generation_from_references_img2img_and_interpolation(m2d, trained):
    from medsynth.systems.m2d import from_references, img2img, interpolate, reference_tokens
    cfg, net, _, _ = load_run(trained); s = read_set(m2d/'cls'); enc = encoder_of(cfg)
    refs = s.images[s.labels == 0][:3] * 2 - 1; tok = reference_tokens(enc, refs)
    g = lambda: torch.Generator().manual_seed(0)
    x = from_references(net, cfg, tok, 3, label=0, generator=g())
    assert x.shape == (3, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, from_references(net, cfg, tok, 3, label=0, generator=g()))              # deterministic
    y = from_references(net, cfg, tok.roll(1, 0), 3, label=0, generator=g())                      # same noise, other references
    assert ((x - y).flatten(1).abs().mean(1) > 1e-4).all()
    # image to image: strength 0 returns the input, 1 ignores it
    sp = space_of(cfg)
    with torch.no_grad(): rec = sp.decode(sp.encode(refs)).clamp(-1, 1)
    assert torch.equal(img2img(net, cfg, refs, 0., features=tok, label=0), refs.clamp(-1, 1))
    assert (img2img(net, cfg, refs, 1., features=tok, label=0, generator=g()) - refs).abs().mean() > (rec - refs).abs().mean()   # further than the autoencoder's own error
    # interpolation: its ends are each set's own sample (mean tokens) from the same noise
    tb = reference_tokens(enc, s.images[s.labels == 6][:3] * 2 - 1)
    path = interpolate(net, cfg, tok, tb, n=4, generator=g())
    assert path.shape == (4, 1, 32, 32) and torch.equal(path, interpolate(net, cfg, tok, tb, n=4, generator=g()))
    gg = g(); lat = (1, *sp.latent_shape((1, 32, 32))); za, zb = torch.randn(lat, generator=gg), torch.randn(lat, generator=gg)
    end = lambda t, z: generate(net, cfg, (1, 1, 32, 32), sampler='ddim', features=t.mean(0, keepdim=True), x_T=z)
    torch.testing.assert_close(path[:1], end(tok, za), atol=1e-5, rtol=0)
    torch.testing.assert_close(path[-1:], end(tb, zb), atol=1e-4, rtol=0)
    assert (path[1] - path[0]).abs().mean() > 0 and (path[2] - path[3]).abs().mean() > 0

def test_feature_guidance_is_exact_at_one_and_zero(m2d, trained, tmp_path):
    "Classifier-free guidance on labels and features: w = 1 is the conditional model, w = 0 the model without either."
    from medsynth.systems.m2d import from_references, reference_tokens
    cfg, net, _, _ = load_run(trained); s = read_set(m2d/'cls')
    tok = reference_tokens(encoder_of(cfg), s.images[s.labels == 0][:2] * 2 - 1)
    g = lambda: torch.Generator().manual_seed(0)
    x = from_references(net, cfg, tok, 2, label=0, generator=g())
    assert torch.equal(x, from_references(net, cfg, tok, 2, label=0, generator=g(), guidance_scale=1.))
    unc = generate(net, cfg, (2, 1, 32, 32), generator=g())                 # no label, the null token
    assert torch.equal(from_references(net, cfg, tok, 2, label=0, generator=g(), guidance_scale=0.), unc)
    w2 = from_references(net, cfg, tok, 2, label=0, generator=g(), guidance_scale=2.)
    assert (w2 - x).abs().mean() > 0 and (w2 - unc).abs().mean() > 0
    a = sorted(p for p in (m2d/'cls').iterdir() if p.is_dir())[0]
    r = cli('sample', trained, '--n', 2, '--label', 0, '--out', tmp_path/'w2', '--no-progress', '--references', a, '--cfg', 2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {x['guidance_scale'] for x in csv.DictReader(open(tmp_path/'w2'/'manifest.csv'))} == {'2.0'}

def test_sample_cli_references_init_between(m2d, trained, tmp_path):
    "The run-level writer: `medsynth sample RUN --references | --init --strength | --between`, each with a manifest."
    cls = m2d/'cls'; a, b = sorted(p for p in cls.iterdir() if p.is_dir())[:2]
    for name, args, says in [('ref', ['--references', a], 'reference '), ('init', ['--init', a, '--strength', 0.5], 'strength 0.5'), ('between', ['--between', a, b], 'w=1.000')]:
        r = cli('sample', trained, '--n', 3, '--label', 0, '--out', tmp_path/name, '--no-progress', *args)
        assert r.returncode == 0, r.stderr[-2000:]
        rows = list(csv.DictReader(open(tmp_path/name/'manifest.csv')))
        assert len(rows) == 3 and all((tmp_path/name/x['file']).exists() for x in rows) and says in rows[-1]['conditioning'], rows
    bad = cli('sample', trained, '--n', 2, '--label', 0, '--out', tmp_path/'bad', '--init', a, '--strength', 2)
    assert bad.returncode == 2 and 'argument --strength: 2.0 is not allowed' in bad.stderr and bad.stderr.count('\n') == 1, bad.stderr
    assert not (tmp_path/'bad').exists()

# 6. the paper
def test_m2d_paper_runs_with_tiny_parameters(tmp_path):
    r = cli('paper', 'm2d', '--runs', tmp_path/'runs', '--no-progress', '-p', 'threads', 1, '-p', 'n_per_class', 6, '-p', 'n_test_per_class', 6,
            '-p', 'epochs', 1, '-p', 'vae_steps', 20, '-p', 'encoder_steps', 20, '-p', 'channels', '[8,16]', '-p', 'fusion_dim', 8, '-p', 'batch_size', 8,
            '-p', 'n_synthetic', 6, '-p', 'sample_steps', 3, '-p', 'utility_steps', 10, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    run = next((tmp_path/'runs'/'m2d').iterdir())
    md = (run/'ablation.md').read_text()
    rows = [l.split('|')[1].strip() for l in md.splitlines() if l.startswith('| ') and not l.startswith('| model')]
    assert rows == ['real only', 'none', 'fusion', 'fusion+repa', 'repa-e'], md
    said = md.split('## Verdict')[1].strip().splitlines()                # per model its ladder, then real only, then each
    assert len(said) == 4 + 1 + 4 and said[4].startswith(('- the real-only baseline', '- uninformative: the real-only'))
    assert r.stdout.strip().splitlines()[-9:] == [f"verdict: {t[2:]}" for t in said]      # printed last by the CLI
    m = json.loads((run/'metrics.json').read_text())
    assert all(m['results'][k]['fid'] is not None for k in ('none', 'fusion', 'fusion+repa', 'repa-e'))
    assert m['results']['none']['valid_repa'] is None and m['results']['repa-e']['valid_repa'] < 0
    assert (run/'repa_e'/'autoencoder.pt').exists() and all((run/f).exists() for f in ('samples.png', 'img2img.png', 'interpolation.png'))
    assert len(list((run/'fusion'/'synthetic').glob('*/*.png'))) == 7 * 6
    bad = cli('paper', 'm2d', '--runs', tmp_path/'runs', '--no-progress', '-p', 'encoder', 'panderm')
    assert bad.returncode == 2 and 'encoder=panderm needs encoder_weights' in bad.stderr, bad.stderr[-500:]
