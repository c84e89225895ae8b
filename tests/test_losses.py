"""Issue 21 (items 3, 4, 7) through the trainer: the loss norm and the perceptual term on the x0 estimate from a local
weights file the test writes (one-line error when it is missing), the rectified-flow time shift, and EMA schedules that
resume bit-exactly."""
import math
import pytest, torch, torchvision
from conftest import cli, one_line_error
from medsynth.diffusion.param import from_x0_eps
from medsynth.training.config import make_config
from medsynth.training.callbacks import DiffusionLoss, time_shift_of, EMACB
from medsynth.training.generation import schedule_of
from medsynth.training.learner import train
from medsynth.training.checkpoint import load_checkpoint
from medsynth.spaces.vae import feature_distance

TINY = dict(channels=[16, 32], attention_levels=[False, True], num_head_channels=16, batch_size=4, ema_after=0,
            lr=3e-3, mode='uncond', size=[16, 16])

@pytest.fixture(scope='module')
def data(phantoms): return phantoms

@pytest.fixture(scope='module')
def resnet50_file(tmp_path_factory):
    "A randomly initialised torchvision ResNet-50 state dict, standing in for ImageNet or RadImageNet weights."
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp('weights')/'resnet50.pth'
    torch.save(torchvision.models.resnet50().state_dict(), p)
    return p

def _batch(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.rand(n, 1, 16, 16, generator=g) * 2 - 1, torch.randn(n, 1, 16, 16, generator=g)
    return x0, eps, torch.tensor([100, 700]), torch.ones(n)

def test_perceptual_term_adds_its_weighted_distance_and_changes_the_gradient(resnet50_file):
    cfg = make_config(dict(TINY, perceptual='resnet50', perceptual_weight=0.5, perceptual_weights=str(resnet50_file)))
    plain = make_config(TINY)
    sch = schedule_of(cfg)
    x0, eps, t, imp = _batch()
    pred = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), requires_grad=True)
    with_p, without = DiffusionLoss.of(cfg, sch), DiffusionLoss.of(plain, sch)
    lp, l0 = with_p(pred, x0, eps, t, imp), without(pred, x0, eps, t, imp)
    gp, = torch.autograd.grad(lp, pred)
    g0, = torch.autograd.grad(l0, pred)
    # the formula written out: v-prediction's x0 estimate a x_t - s v, the ResNet-50's last feature map, unit channels
    a, s = (v.float().view(-1, 1, 1, 1) for v in sch.alpha_sigma(t))
    x0_hat = a * (a * x0 + s * eps) - s * pred.detach()
    net = torchvision.models.resnet50()
    net.load_state_dict(torch.load(resnet50_file))
    trunk = torch.nn.Sequential(*list(net.children())[:-2]).eval()
    m, sd = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    up = lambda x: torch.nn.functional.interpolate((x + 1) / 2, size=(64, 64), mode='bilinear', align_corners=False,
                                                   antialias=True).expand(-1, 3, -1, -1)
    feats = lambda x: trunk((up(x) - m) / sd)
    with torch.no_grad():
        want = feature_distance(feats(x0_hat), feats(x0))
    assert want > 0
    torch.testing.assert_close(lp.detach() - l0.detach(), 0.5 * want, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(gp, g0)
    # an exact prediction has no perceptual distance
    exact = from_x0_eps(x0, eps, a, s, 'v')
    torch.testing.assert_close(with_p(exact, x0, eps, t, imp), without(exact, x0, eps, t, imp), rtol=0, atol=1e-6)

def test_missing_perceptual_weights_is_one_line_and_writes_nothing(data, tmp_path):
    run = tmp_path/'run'
    r = cli('train', '--run', run, '--no-progress', f'data={data/"cls"}', 'mode=uncond', 'size=[16,16]',
            'perceptual=vgg', 'perceptual_weight=0.1', f'perceptual_weights={tmp_path/"vgg16-397923af.pth"}')
    one_line_error(r, 'vgg16-397923af.pth', 'perceptual_weights')
    assert not run.exists()

@pytest.mark.parametrize('bad,message', [
    (dict(perceptual='vgg'), 'perceptual_weight > 0'), (dict(perceptual_weight=1.), 'perceptual_weight > 0'),
    (dict(perceptual='vgg', perceptual_weight=1.), 'perceptual_weights=FILE'), (dict(perceptual='lpips'), 'perceptual'),
    (dict(loss='l3'), 'loss'), (dict(huber_delta=0), 'huber_delta'), (dict(time_shift=2.), 'strategy=rflow'),
    (dict(strategy='rflow', time_shift=2., time_shift_base=32), 'not both'), (dict(time_shift=0), 'time_shift'),
    (dict(strategy='rflow', time_shift=2., timestep_sampler='loss_aware'), 'logit_normal'),
    (dict(ema_schedule='cosine'), 'cosine_ramp'),
    (dict(perceptual='vgg', perceptual_weight=1., perceptual_weights='w.pth', autoencoder='ae.pt'), 'latents')])
def test_bad_keys_are_one_line_errors(bad, message):
    with pytest.raises(ValueError, match=message) as e:
        make_config(dict(TINY, **bad))
    assert '\n' not in str(e.value)

def test_time_shift_of_the_diffused_resolution():
    assert time_shift_of(make_config(TINY)) == {}
    assert time_shift_of(make_config(dict(TINY, strategy='rflow', time_shift=3.))) == dict(shift=3.)
    cfg = make_config(dict(TINY, strategy='rflow', size=[64, 64], time_shift_base=32))
    assert time_shift_of(cfg) == dict(shift=2.)                                      # SD3: sqrt(64^2 / 32^2)
    class Latent:                                                                    # a 4x autoencoder
        def latent_shape(self, s): return (4,) + tuple(v // 4 for v in s)
    assert time_shift_of(cfg, Latent()) == dict(shift=0.5)

def test_loss_norm_reaches_the_trainer():
    x0, eps, t, imp = _batch()
    pred = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    cfg = make_config(dict(TINY, loss='l1', weighting='none', prediction='eps'))
    got = DiffusionLoss.of(cfg, schedule_of(cfg))(pred, x0, eps, t, imp)
    torch.testing.assert_close(got, (pred - eps).abs().mean())

SMALL = dict(TINY, channels=[8, 16], attention_levels=[False, False], num_head_channels=8, batch_size=32, epochs=2,
             ema_beta=0.9)

def test_ema_schedules_resume_bit_exactly(data, tmp_path):
    """Interrupted runs (stopped by their time budget after epoch 1, then resumed) equal the uninterrupted ones, for the
    cosine ramp and the power (Karras) EMA; the schedule is in effect (the EMA differs between the two)."""
    ema = {}
    for schedule in ('cosine_ramp', 'karras'):
        cfg = make_config(dict(SMALL, data=str(data/'cls'), ema_schedule=schedule))
        train(cfg, tmp_path/f'{schedule}-full', progress=False)
        train(make_config(dict(SMALL, data=str(data/'cls'), ema_schedule=schedule, max_minutes=0)),
              tmp_path/f'{schedule}-cut', progress=False)
        assert load_checkpoint(tmp_path/f'{schedule}-cut/checkpoints/last.pt')['epoch'] == 1
        train(cfg, tmp_path/f'{schedule}-cut', resume=True, progress=False)
        a, b = (load_checkpoint(tmp_path/f'{schedule}-{r}/checkpoints/last.pt') for r in ('full', 'cut'))
        assert a['epoch'] == b['epoch'] == 2
        for k in ('model', 'ema'):
            for n in a[k]:
                assert torch.equal(a[k][n], b[k][n]), (schedule, k, n)
        ema[schedule] = a
    c, k = ema['cosine_ramp'], ema['karras']
    assert all(torch.equal(c['model'][n], k['model'][n]) for n in c['model'])       # the same training
    assert not all(torch.equal(c['ema'][n], k['ema'][n]) for n in c['ema'] if n.startswith('ema_model.'))

def test_cosine_ramp_spans_the_run():
    "`K` of the ramp: the run's optimiser steps (epochs x batches / accumulate), set when the fit starts."
    cb = EMACB.of(torch.nn.Linear(1, 1), make_config(dict(TINY, ema_schedule='cosine_ramp', accumulate=2)))
    class L:                                                                         # what before_fit reads
        n_epoch, dls = 5, type('D', (), dict(train=range(7)))()
    cb.learn = L()
    cb.before_fit()
    assert cb.ema.total_steps == 5 * 7 // 2
    cb.ema.step.fill_(1)
    assert math.isclose(cb.ema.get_current_decay(), 0.999)
    cb.ema.step.fill_(9)
    assert math.isclose(cb.ema.get_current_decay(), 1 - 0.001 * (math.cos(math.pi * 8 / 17) + 1) / 2)
