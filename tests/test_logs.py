"""Logs that read well where no one watches a terminal: with stdout a pipe (a log file, a SLURM job), training writes
one plain line per epoch and sampling one per batch, with no carriage-return frames of a progress bar."""
import re
import pytest
from conftest import cli

TINY = ['size=[16,16]', 'channels=[8,8]', 'attention_levels=[false,false]', 'num_head_channels=8', 'batch_size=8',
        'ema_after=0', 'sample_steps=3', 'sampler=ddim']

@pytest.fixture(scope='module')
def trained(phantoms, tmp_path_factory):
    "A class-conditional run of two epochs on the shared class folders, trained with its output captured."
    run = tmp_path_factory.mktemp('logs')/'run'
    r = cli('train', f'data={phantoms/"cls"}', 'mode=class', 'epochs=2', *TINY, '--run', run)
    assert r.returncode == 0, r.stderr[-3000:]
    return run, r

def plain(out:str):
    assert '\r' not in out, repr(out[:500])
    assert 'Traceback' not in out, out[-2000:]

def test_training_writes_one_line_per_epoch(trained):
    _, r = trained
    plain(r.stdout + r.stderr)
    epochs = [l for l in r.stdout.splitlines() if l.startswith('epoch ')]
    assert [l.split()[1] for l in epochs] == ['1/2', '2/2'], r.stdout

def test_sampling_writes_one_line_per_batch(trained, tmp_path):
    run, _ = trained
    r = cli('sample', run, '--n', 5, '--batch-size', 2, '--steps', 4, '--label', 1, '--out', tmp_path/'s')
    assert r.returncode == 0, r.stderr[-3000:]
    plain(r.stdout + r.stderr)
    lines = [l for l in r.stdout.splitlines() if l.startswith('sampling ')]
    # image i of the seed is the same whatever the batch: the line names the batch's images, as the bar counts steps
    assert [re.fullmatch(r"sampling images (\d+-\d+): 4 steps in \d+\.\d s", l).group(1) for l in lines] == \
           ['0-1', '2-3', '4-4'], r.stdout

def test_sdedit_writes_one_line_per_batch(trained, tmp_path, phantoms):
    run, _ = trained
    r = cli('sample', run, '--init', phantoms/'cls'/'ring_enhancing', '--sdedit', 0.5, '--label', 0, '--batch-size', 16,
            '--steps', 4, '--out', tmp_path/'e')
    assert r.returncode == 0, r.stderr[-3000:]
    plain(r.stdout + r.stderr)
    lines = [l for l in r.stdout.splitlines() if l.startswith('sdedit ')]
    n = len(list((phantoms/'cls'/'ring_enhancing').glob('*.png')))
    assert len(lines) == -(-n // 16) and all(re.fullmatch(r"sdedit images \d+-\d+: 0\.5 of 4 steps in \S+ s", l)
                                              for l in lines), r.stdout
