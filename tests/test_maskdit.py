"""MaskDiT (`mask_ratio`, `mae_weight` with backbone=dit): training drops exactly the asked share of patch tokens,
validation and sampling none; the loss is the diffusion loss on the kept patches plus the MAE term, as written out by
hand; mask_ratio=0 is the plain DiT; a masked run resumes bit for bit and samples through the CLI; bad combinations are
one-line errors. REPA-E on the DiT end to end: the VAE is tuned, a resumed run equals an uninterrupted one, the run
samples, and the perceptual network of the autoencoder's loss moves with the autoencoder."""
import pytest, torch
from conftest import cli, one_line_error, latent_testbed
from test_backbones import TINY, _same
from medsynth.models.dit import DiT, patch_keep
from medsynth.diffusion.param import from_x0_eps, net_inputs
from medsynth.diffusion.objectives import loss_weight
from medsynth.training.config import make_config
from medsynth.training.learner import train, build_learner
from medsynth.training.data import build_datasets, build_dataloaders, mode_of
from medsynth.training.network import build_model
from medsynth.training.generation import generate, schedule_of
from medsynth.training.callbacks import DiffusionLoss
from medsynth.training.checkpoint import load_checkpoint

torch.set_num_threads(1)

def masked(phantoms, **kw):
    return dict(TINY, data=str(phantoms/'sub'), mode='bravo', backbone='dit', size=[16, 16], mask_ratio=0.5,
                lr_schedule='constant', **kw)

def test_training_drops_the_share_of_tokens_validation_and_sampling_none(phantoms, tmp_path):
    "16x16 images in 2x2 patches: 64 tokens; mask_ratio 0.5 keeps 32 in training, all 64 in validation and sampling."
    cfg = make_config(dict(masked(phantoms), epochs=1))
    tr, va, classes = build_datasets(cfg); (tmp_path/'run'/'logs').mkdir(parents=True)
    learn = build_learner(cfg, tmp_path/'run', build_dataloaders(tr, va, cfg), classes, progress=False)
    seen = {True: set(), False: set()}
    learn.net.blocks[0].register_forward_hook(lambda m, i, o: seen[m.training].add(i[0].shape[1]))
    dec = set()
    learn.net.decoder[0].register_forward_hook(lambda m, i, o: dec.add(i[0].shape[1]))
    learn.fit(1)
    assert seen == {True: {32}, False: {64}} and dec == {64}, (seen, dec)
    seen[False].clear()
    x = generate(learn.net, cfg, (2, 1, 16, 16), cond=torch.zeros(2, 1, 16, 16), steps=2,
                 generator=torch.Generator().manual_seed(0))
    assert seen[False] == {64} and x.shape == (2, 1, 16, 16)

def test_masked_loss_equals_the_hand_computation():
    "Each sample's loss: the mean squared v-error over its kept 2x2 patches, Min-SNR weighted, + 0.3 x the MAE term."
    sch = schedule_of(make_config(dict(data='unused', size=[8, 8])))
    g = torch.Generator().manual_seed(0)
    pred, x0, eps = (torch.randn(3, 2, 8, 8, generator=g) for _ in range(3))
    t, keep = torch.tensor([10, 500, 990]), patch_keep(3, 16, 0.75, g)
    loss = DiffusionLoss(sch, 'v', 'min_snr', 5., mae_weight=0.3, patch_size=2)
    got = loss(pred, x0, eps, t, torch.ones(3), keep)
    a, s = sch.alpha_sigma(t)
    per, mae = [], []
    for b in range(3):
        tgt = from_x0_eps(x0[b], eps[b], a[b], s[b], 'v').float()
        x_in = net_inputs(sch.add_noise(x0[b:b + 1], eps[b:b + 1], t[b:b + 1]), t[b:b + 1], sch, 'v')[0][0]
        kept = [int(i) for i in keep[b]]
        errs, recs = [], []
        for i in range(16):
            r, q = divmod(i, 4)
            sl = (slice(None), slice(2 * r, 2 * r + 2), slice(2 * q, 2 * q + 2))
            if i in kept:
                errs.append((pred[b][sl] - tgt[sl]).square().flatten())
            else:                                          # MAE: the patch's pixels (channel last), normalised
                p = x_in[sl].permute(1, 2, 0).flatten()
                recs.append((pred[b][sl].permute(1, 2, 0).flatten() - (p - p.mean()) / (p.var() + 1e-6).sqrt())
                            .square().mean())
        per.append(torch.cat(errs).mean())
        mae.append(torch.stack(recs).mean())
    w = loss_weight(sch, t, 'v', 'min_snr', 5.).float()
    want = (w * torch.stack(per)).mean() + 0.3 * torch.stack(mae).mean()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.per_sample, torch.stack(per), rtol=1e-5, atol=1e-6)
    assert len(keep[0]) == 4                                # int(16 x 0.25) patches kept

def test_mask_ratio_zero_is_the_plain_dit(phantoms):
    "No decoder or mask token without masking; and a masked DiT keeping every patch is its unmasked forward."
    cfg = make_config(dict(masked(phantoms), mask_ratio=0.))
    net = build_model(cfg, mode_of(cfg))
    torch.manual_seed(cfg.seed)
    plain = DiT(2, channels_out=1, cond_channels=1, patch_size=2, width=32, depth=2, heads=2)
    assert net.decoder is None and net.mask_token is None
    assert net.state_dict().keys() == plain.state_dict().keys()
    for k, v in plain.state_dict().items(): assert torch.equal(net.state_dict()[k], v), k
    md = build_model(make_config(masked(phantoms)), mode_of(cfg))
    for p in md.parameters(): torch.nn.init.normal_(p, std=0.05)
    x, m = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    every = torch.arange(64).expand(2, 64)
    assert torch.equal(md(x, 5., cond=m, keep=every), md(x, 5., cond=m))

def test_masked_dit_resumes_exactly_and_samples(phantoms, tmp_path):
    "One epoch then a resume to two equals two uninterrupted epochs bit for bit (masks come from the training RNG)."
    base = masked(phantoms, mae_weight=0.5)
    train(make_config(dict(base, epochs=2)), tmp_path/'full', progress=False)
    train(make_config(dict(base, epochs=1)), tmp_path/'cut', progress=False)
    train(make_config(dict(base, epochs=2)), tmp_path/'cut', resume=True, progress=False)
    a, b = load_checkpoint(tmp_path/'full/checkpoints/last.pt'), load_checkpoint(tmp_path/'cut/checkpoints/last.pt')
    assert a['epoch'] == b['epoch'] == 2 and any(k.startswith('decoder.') for k in a['model'])
    _same(a, b)
    r = cli('sample', tmp_path/'cut', '--n', 2, '--steps', 3, '--out', tmp_path/'s', '--no-progress')
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path/'s').rglob('*.png'))) >= 2

@pytest.mark.parametrize('keys,message', [
    (['backbone=unet', 'mask_ratio=0.5'], 'set backbone=dit or mask_ratio=0'),
    (['backbone=dit', 'mask_ratio=0.5', 'perceptual=domain', 'perceptual_weight=0.1'], 'set perceptual_weight=0'),
    (['backbone=dit', 'mask_ratio=1'], 'mask_ratio'),
], ids=['unet', 'perceptual', 'ratio-1'])
def test_bad_masking_is_one_line(phantoms, tmp_path, keys, message):
    r = cli('train', f'data={phantoms/"sub"}', 'mode=bravo', 'size=[16,16]', *keys, '--run', tmp_path/'r')
    one_line_error(r, message)

def test_repa_with_masking_is_one_line(phantoms, tmp_path):
    with pytest.raises(ValueError, match='set mask_ratio=0 or repa=0'):
        make_config(dict(masked(phantoms), encoder='domain', encoder_weights='unused.pt', repa=0.5))

# REPA-E on the DiT
@pytest.fixture(scope='module')
def m2d(tmp_path_factory):
    "Class folders (32 px), a domain encoder and a tiny VAE (factor 2) with a perceptual term on the encoder."
    return latent_testbed(tmp_path_factory.mktemp('repa_e_dit'), k=3, n=24, steps=10, batch_size=16, lr=3e-3,
                          perceptual=True)

def repa_e(d, **kw):
    return dict(TINY, data=str(d/'cls'), mode='class', image='image', size=[32, 32], backbone='dit', batch_size=8,
                autoencoder=str(d/'autoencoder.pt'), encoder='domain', encoder_weights=str(d/'encoder.pt'), repa=0.5, repa_e=True,
                vae_lr=1e-3, vae_perceptual_weights=str(d/'encoder.pt'), lr_schedule='constant', sampler='ddim',
                sample_steps=3, **kw)

def test_repa_e_on_the_dit_tunes_the_vae_resumes_exactly_and_samples(m2d, tmp_path):
    train(make_config(repa_e(m2d, epochs=2)), tmp_path/'full', progress=False)
    train(make_config(repa_e(m2d, epochs=1)), tmp_path/'cut', progress=False)
    train(make_config(repa_e(m2d, epochs=2)), tmp_path/'cut', resume=True, progress=False)
    a, b = load_checkpoint(tmp_path/'full/checkpoints/last.pt'), load_checkpoint(tmp_path/'cut/checkpoints/last.pt')
    _same(a, b)
    assert all(torch.equal(a['repa_e']['vae'][k], b['repa_e']['vae'][k]) for k in a['repa_e']['vae'])
    start = torch.load(m2d/'autoencoder.pt', weights_only=False)['state_dict']
    assert any(not torch.equal(a['repa_e']['vae'][k], v) for k, v in start.items())          # the VAE was tuned
    assert (tmp_path/'cut'/'autoencoder.pt').exists()
    r = cli('sample', tmp_path/'cut', '--n', 2, '--label', 1, '--out', tmp_path/'s', '--no-progress')
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path/'s').glob('*.png'))) == 2

def test_repa_e_perceptual_network_follows_the_network(m2d, tmp_path):
    "Before the fix the encoder behind the VAE's perceptual term stayed on the CPU; the meta device stands in for a GPU."
    from medsynth.models.repa import RepaECB
    cfg = make_config(repa_e(m2d, epochs=1))
    tr, va, classes = build_datasets(cfg); (tmp_path/'run'/'logs').mkdir(parents=True)
    learn = build_learner(cfg, tmp_path/'run', build_dataloaders(tr, va, cfg), classes, progress=False)
    ecb = next(cb for cb in learn.cbs if isinstance(cb, RepaECB))
    assert ecb.perceptual_net is not None
    learn.net.to('meta')
    ecb.to_net_device()
    devices = {p.device.type for p in ecb.perceptual_net.parameters()}
    assert devices == {next(ecb.space.model.parameters()).device.type} == {'meta'}, devices
