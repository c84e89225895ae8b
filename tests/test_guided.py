"""Guided sampling and image to image on an RGB class-folder dataset, end to end: a class-conditional run, an
unconditional one and noisy classifiers trained by `medsynth train`, sampled by `sample_run` and `medsynth sample`
with classifier-free guidance (`--cfg`), classifier and uncertainty guidance (`--classifier`), DDIB translation
(`--translate`) and SDEdit (`--init --sdedit`)."""
import csv
import numpy as np
import pytest
from conftest import cli, one_line_error
from medsynth.core.io import read_image, write_png

TINY = ['epochs=1', 'size=[16,16]', 'channels=[8,8]', 'attention_levels=[false,false]', 'num_head_channels=8',
        'batch_size=8', 'sample_steps=3', 'sampler=ddim', 'ema_after=0']

def train(*args):
    r = cli('train', *TINY, *args, '--no-progress')
    assert r.returncode == 0, r.stderr[-3000:]

@pytest.fixture(scope='module')
def rgb(tmp_path_factory, phantoms):
    "RGB class folders (2 classes x 8 images of 16 px), a plain folder of 16 px images, one of 8 px, and the runs."
    d = tmp_path_factory.mktemp('rgb')
    rng = np.random.default_rng(0)
    for k, name in enumerate(('blue', 'red')):
        for i in range(8):
            a = rng.uniform(0, .3, (3, 16, 16)).astype(np.float32)
            a[2 - 2 * k] += .6
            write_png(d/'cls'/name/f'{i}.png', a)
            if i < 2:
                write_png(d/'plain'/f'{name}{i}.png', a)
                write_png(d/'small'/f'{name}{i}.png', a[:, :8, :8])
    data = f'data={d/"cls"}'
    train(data, 'mode=class', 'image_channels=3', '--run', d/'run')
    train(data, 'mode=uncond', 'image_channels=3', '--run', d/'unc')
    train(data, 'mode=class', 'image_channels=3', '--classifier', '--run', d/'clf')
    train(f'data={phantoms/"cls"}', 'mode=class', '--classifier', '--run', d/'gray')   # 3 classes, 1 channel
    return d

def images(folder):
    return {f.name: read_image(f) for f in sorted(folder.glob('*.png'))}

def manifest(folder):
    return list(csv.DictReader(open(folder/'manifest.csv')))

def test_cfg_weights_one_and_zero_are_exact(rgb, tmp_path):
    "w = 1 is the conditional model bit for bit; w = 0 the unconditional one, so every label gives the same images."
    from medsynth.training.runs import sample_run
    go = lambda name, **kw: images(sample_run(rgb/'run', n=2, seed=3, out=tmp_path/name, progress=False, **kw))
    plain, one = go('plain', label=1), go('one', label=1, guidance_scale=1.)
    assert plain.keys() == one.keys() and all(np.array_equal(plain[k], one[k]) for k in plain)
    assert next(iter(plain.values())).shape == (3, 16, 16)                    # RGB from the data
    z0, z1 = go('z0', label=0, guidance_scale=0.), go('z1', label=1, guidance_scale=0.)
    assert all(np.array_equal(z0[k], z1[k]) for k in z0)
    assert manifest(tmp_path/'z0')[0]['guidance_scale'] == '0.0'

def test_classifier_scale_zero_is_the_unguided_sampler(rgb, tmp_path):
    from medsynth.training.runs import sample_run
    from medsynth.systems.mgdm import classifier_guide
    from medsynth.core.io import file_sha256
    go = lambda name, **kw: images(sample_run(rgb/'run', n=2, label=0, out=tmp_path/name, progress=False, **kw))
    plain, zero = go('plain'), go('zero', guide=classifier_guide(rgb/'clf'), guide_scale=0.)
    assert all(np.array_equal(plain[k], zero[k]) for k in plain)
    strong = go('strong', guide=classifier_guide(rgb/'clf'), guide_scale=50.)
    assert not all(np.array_equal(plain[k], strong[k]) for k in plain)
    row = manifest(tmp_path/'strong')[0]
    assert (row['guide'], row['guide_sha256'], row['guide_scale'], row['measure']) == (
        str(rgb/'clf'), file_sha256(rgb/'clf/checkpoints/classifier.pt'), '50.0', 'log_prob')

def test_cli_cfg_with_classifier(rgb, tmp_path):
    r = cli('sample', rgb/'run', '--label', 1, '--n', 2, '--cfg', 2, '--classifier', rgb/'clf', '--classifier-scale',
            3, '--measure', 'entropy', '--out', tmp_path/'o', '--no-progress')
    assert r.returncode == 0, r.stderr[-3000:]
    rows = manifest(tmp_path/'o')
    assert len(rows) == 2 and {(x['guidance_scale'], x['guide_scale'], x['measure']) for x in rows} == {
        ('2.0', '3.0', 'entropy')}
    assert read_image(tmp_path/'o'/rows[0]['file']).shape == (3, 16, 16)

def test_cli_uncertainty_guidance_of_an_unconditional_run(rgb, tmp_path):
    r = cli('sample', rgb/'unc', '--n', 2, '--classifier', rgb/'clf', '--measure', 'margin', '--out', tmp_path/'o',
            '--no-progress')
    assert r.returncode == 0, r.stderr[-3000:]
    assert manifest(tmp_path/'o')[0]['measure'] == 'margin'
    # log_prob guides towards a class: an unconditional run takes it from --label
    r = cli('sample', rgb/'unc', '--n', 2, '--classifier', rgb/'clf', '--label', 1, '--out', tmp_path/'p')
    assert r.returncode == 0, r.stderr[-3000:]

def test_cli_translate(rgb, tmp_path):
    "DDIB: class folders bring their labels, a plain folder takes --label; uncertainty guidance on the decoder."
    r = cli('sample', rgb/'run', '--translate', rgb/'cls', '--to-label', 0, '--steps', 4, '--out', tmp_path/'o',
            '--no-progress')
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [x for x in manifest(tmp_path/'o') if x['key'] == 'image']
    assert len(rows) == 16 and {x['source_label'] for x in rows} == {'0', '1'} and {x['target_label'] for x in rows} == {'0'}
    assert rows[0]['source'] == '0.png' and rows[0]['sampler'] == 'ddim'
    r = cli('sample', rgb/'run', '--translate', rgb/'plain', '--label', 1, '--to-label', 0, '--classifier', rgb/'clf',
            '--measure', 'entropy', '--out', tmp_path/'p', '--no-progress')
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [x for x in manifest(tmp_path/'p') if x['key'] == 'image']
    assert len(rows) == 4 and {x['source_label'] for x in rows} == {'1'} and rows[0]['measure'] == 'entropy'

def test_cli_sdedit(rgb, tmp_path):
    r = cli('sample', rgb/'run', '--init', rgb/'plain', '--sdedit', 0.5, '--label', 1, '--cfg', 2, '--out', tmp_path/'o',
            '--no-progress')
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [x for x in manifest(tmp_path/'o') if x['key'] == 'image']
    assert len(rows) == 4 and rows[0]['strength'] == '0.5' and rows[0]['guidance_scale'] == '2.0'
    r = cli('sample', rgb/'run', '--init', rgb/'plain', '--sdedit', 0, '--label', 1, '--out', tmp_path/'z')
    assert r.returncode == 0, r.stderr[-3000:]
    assert np.array_equal(read_image(tmp_path/'z/00000_image.png'), read_image(tmp_path/'z/00000_real-image.png'))

@pytest.mark.parametrize('run,args,parts', [
    ('run', ['--label', 0, '--classifier', 'clf', '--classifier-scale', -1], ['argument --classifier-scale', '-1.0 is not allowed']),
    ('run', ['--label', 0, '--cfg', -2], ['argument --cfg', 'give a number >= 0']),
    ('run', ['--label', 0, '--classifier', 'gray'], ['knows 3 classes', 'the model 2']),
    ('unc', ['--classifier', 'gray', '--measure', 'entropy'], ['trained on 1-channel images, the run makes 3-channel', 'image_channels=3']),
    ('unc', ['--cfg', 2], ['--cfg 2.0', 'is unconditional', 'leave --cfg out']),
    ('unc', ['--classifier', 'clf'], ['--measure log_prob', 'give it with --label']),
    ('run', ['--translate', 'cls', '--to-label', 5], ['--to-label 5 is out of range', '2 classes']),
    ('run', ['--translate', 'small', '--label', 0, '--to-label', 1], ['blue0.png: is 8x8 but the run makes 16x16', 'resize']),
    ('run', ['--translate', 'plain', '--to-label', 1], ['without class folders', '--label']),
    ('run', ['--label', 0, '--classifier', 'nothing'], ['no classifier checkpoint', '--classifier --run RUN']),
    ('run', ['--label', 0, '--sdedit', 0.5], ['--sdedit STRENGTH', '--init DIR']),
    ('run', ['--label', 0, '--measure', 'margin'], ['go with --classifier']),
])
def test_bad_input_is_one_line_and_writes_nothing(rgb, tmp_path, run, args, parts):
    args = [rgb/a if a in ('clf', 'gray', 'cls', 'small', 'plain', 'nothing') else a for a in args]
    r = cli('sample', rgb/run, '--n', 1, *args, '--out', tmp_path/'o')
    one_line_error(r, *parts)
    assert not (tmp_path/'o').exists()
