"""DDP on 2 CPU processes (gloo) for what ran in one process only before: the class-balanced sampler, REPA-E and PDS's
refinement stage. Each runs `train` under torchrun (tests/ddp_cases.py) and, where the step is deterministic, alone
on the doubled batch: both ranks end with identical weights, and the first averaged gradient equals one process's."""
import json, os, subprocess, sys
from pathlib import Path
import pytest, torch
from conftest import cli, ROOT, latent_testbed
from ddp_cases import main
from medsynth.data.phantoms import BrainPhantom, write_class_folders, write_subjects
from medsynth.systems.pds_data import write_phantom_atlas

torch.set_num_threads(1)
TINY = dict(channels=[8, 16], attention_levels=[False, True], num_head_channels=8, ema_after=0, lr=2e-3, seed=0)

def run_case(cfg:dict, out:Path, batch:int, world:int, port:int) -> list:
    "Train `cfg` with `world` processes of `batch` each (tests/ddp_cases.py); what each process saved."
    out.mkdir(parents=True, exist_ok=True)
    (out/'cfg.json').write_text(json.dumps(cfg))
    if world == 1:                                      # alone: in this process (no second start-up)
        main(out/'cfg.json', out, batch)
    else:
        cmd = [str(Path(sys.executable).parent/'torchrun'), '--nproc_per_node', str(world), '--master_port', str(port),
               str(ROOT/'tests/ddp_cases.py'), str(out/'cfg.json'), str(out), str(batch)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    return [torch.load(out/f'world{world}-rank{k}.pt', weights_only=False) for k in range(world)]

def same_weights(a:dict, b:dict):
    for k in a:
        assert torch.equal(a[k], b[k]), k

def same_first_step(two:list, one:dict):
    "Both ranks hold the all-reduced gradient, which equals one process's gradient on the doubled batch."
    assert one['grads'] and two[0]['grads'].keys() == one['grads'].keys()
    for k in one['grads']:
        torch.testing.assert_close(two[0]['grads'][k], one['grads'][k], rtol=1e-4, atol=1e-6)
        assert torch.equal(two[0]['grads'][k], two[1]['grads'][k]), k

def test_balanced_sampler_shares_one_draw_across_processes(tmp_path):
    write_class_folders(tmp_path/'cls', BrainPhantom(16, seed=0), 20)
    cfg = dict(TINY, data=str(tmp_path/'cls'), mode='class', balanced=True, size=[16, 16], epochs=2)
    two = run_case(cfg, tmp_path/'two', 2, 2, 29541)
    one = run_case(cfg, tmp_path/'one', 4, 1, 29541)[0]
    for e in range(2):                                  # the ranks' shares interleave into one process's draw
        n = len(two[0]['orders'][e])
        test = [i for pair in zip(two[0]['orders'][e], two[1]['orders'][e]) for i in pair]
        assert test == one['orders'][e][:2 * n] and len(one['orders'][e]) - 2 * n < 2, e
    assert one['orders'][0] != one['orders'][1]         # set_epoch: each epoch its own draw
    same_first_step(two, one)
    same_weights(two[0]['model'], two[1]['model'])

@pytest.fixture(scope='module')
def m2d(tmp_path_factory):
    "Class folders (32 px), a domain encoder and a tiny VAE, each trained a few steps (what REPA-E needs, not quality)."
    return latent_testbed(tmp_path_factory.mktemp('m2d'), k=3, n=24, steps=3, batch_size=8)

def test_repa_e_keeps_the_tuned_autoencoder_identical_on_every_process(m2d, tmp_path):
    cfg = dict(TINY, data=str(m2d/'cls'), mode='class', image='image', size=[32, 32], autoencoder=str(m2d/'autoencoder.pt'),
               encoder='domain', encoder_weights=str(m2d/'encoder.pt'), fusion='xattn', fusion_dim=8, repa=0.5,
               repa_e=True, vae_lr=1e-2, epochs=2, sample_every=0)
    r0, r1 = run_case(cfg, tmp_path, 4, 2, 29542)
    assert r0['epochs'] == r1['epochs'] == 2
    vae0 = torch.load(m2d/'autoencoder.pt', weights_only=False)['state_dict']
    assert any(not torch.equal(r0['repa_e']['vae'][k], v) for k, v in vae0.items())    # the VAE was tuned
    same_weights(r0['repa_e']['vae'], r1['repa_e']['vae'])       # on the mean gradient: the same VAE everywhere
    same_weights(r0['model'], r1['model'])
    run = tmp_path/'run-world2'
    ck = torch.load(run/'checkpoints'/'last.pt', weights_only=False)
    same_weights(ck['repa_e']['vae'], r0['repa_e']['vae'])       # rank 0's state in the checkpoint
    assert (run/'autoencoder.pt').exists()

@pytest.fixture(scope='module')
def stage1(tmp_path_factory):
    "A tiny PDS stage 1 (tests/test_pds.py's grids), one epoch through the CLI."
    d = tmp_path_factory.mktemp('pds')
    ph = BrainPhantom((32, 32, 24), second_size=(48, 48, 32), prevalence=1., seed=0)
    write_subjects(d/'sub', ph, 6, modalities=('t1', 'fa'))
    write_phantom_atlas(d/'atlas.nii.gz', ph)
    cfg = dict(TINY, data=str(d/'sub'), mode='pair', dims=3, images=['t1', 'fa'], modalities=['t1', 'fa'],
               size=[16, 16, 12], second_size=[24, 24, 16], atlas=str(d/'atlas.nii.gz'), attention_levels=[False, False],
               batch_size=2, sample_steps=2, valid_frac=0.2)
    r = cli('train', *[f'{k}={json.dumps(v)}' for k, v in cfg.items()], 'epochs=1', '--run', d/'s1', '--no-progress')
    assert r.returncode == 0, r.stderr[-2000:]
    return cfg, d/'s1'

def test_refinement_on_two_processes_equals_one_on_the_doubled_batch(stage1, tmp_path):
    base, s1 = stage1
    cfg = dict(base, refine=True, stage1=str(s1), epochs=2)
    two = run_case(cfg, tmp_path/'two', 2, 2, 29543)
    one = run_case(cfg, tmp_path/'one', 4, 1, 29543)[0]
    same_first_step(two, one)
    same_weights(two[0]['model'], two[1]['model'])
    cache = [torch.load(tmp_path/d/f'run-world{w}'/'stage1.pt', weights_only=False) for d, w in (('two', 2), ('one', 1))]
    for k in ('train', 'valid'):                        # every process sampled stage 1 alike: one process's maps
        assert torch.equal(cache[0][k], cache[1][k]), k
    assert (tmp_path/'two'/'run-world2'/'metrics.json').exists()
