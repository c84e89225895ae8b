"""Runs are never lost and bad input is one line: what medsynth may delete, one writer per run folder, validation before
anything is written, one-line errors at the CLI boundary, per-image seeds, logs that survive a resume."""
import csv, json, os, shutil, signal, subprocess, time
from pathlib import Path
import nbformat, numpy as np, pandas as pd, pytest, torch
from PIL import Image
from conftest import tool, cli, one_line_error

NET = ['channels=[16,32]', 'attention_levels=[false,true]', 'num_head_channels=16', 'batch_size=4', 'size=[16,16]']


@pytest.fixture(scope='module')
def data(phantoms): return phantoms

@pytest.fixture(scope='module')
def run(data, tmp_path_factory):
    r = tmp_path_factory.mktemp('rel')/'runs'/'bravo'
    out = cli('train', f'data={data/"sub"}', 'epochs=1', *NET, '--run', r, '--no-progress')
    assert out.returncode == 0, out.stderr[-3000:]
    return r

def snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in Path(folder).rglob('*') if p.is_file())

# --- runs clean never deletes what is not a finished paper run ---------------------------------------------------

def write_paper(path, body="import json, pathlib\npathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'n': n}))"):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("out_dir = 'runs/tiny'\nn = 1\nwait = 0.0"),
                nbformat.v4.new_code_cell("import time\ntime.sleep(wait)\n" + body)]
    nb.cells[0].metadata['tags'] = ['parameters']
    nb.metadata['kernelspec'] = dict(name='python3', display_name='Python 3', language='python')
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))

def test_runs_clean_keeps_training_runs(run, data):
    "A training run under the runs root is not a paper's run: its checkpoints, logs and samples stay."
    before = snapshot(run)
    r = cli('runs', 'clean', '--keep', '0', '--runs', run.parent)
    assert r.returncode == 0, r.stderr
    assert snapshot(run) == before

def test_runs_clean_removes_only_finished_paper_runs(tmp_path):
    write_paper(tmp_path/'papers'/'tiny.ipynb')
    for n in (1, 2): assert cli('paper', 'tiny', '-p', 'n', n, '--papers', tmp_path/'papers', '--runs', tmp_path/'runs').returncode == 0
    done = sorted((tmp_path/'runs'/'tiny').iterdir())
    stray = tmp_path/'runs'/'tiny'/'my-notes'; stray.mkdir(); (stray/'notes.txt').write_text('mine')
    r = cli('runs', 'clean', '--keep', '0', '--runs', tmp_path/'runs')
    assert r.returncode == 0, r.stderr
    assert not any(d.exists() for d in done) and (stray/'notes.txt').read_text() == 'mine'

def test_killed_paper_is_crashed_and_kept(tmp_path):
    "SIGKILL leaves status 'running' behind; `runs` reports it as crashed, and clean treats it as failed, not alive."
    write_paper(tmp_path/'papers'/'slow.ipynb')
    p = subprocess.Popen([tool('medsynth'), 'paper', 'slow', '-p', 'wait', '120', '--papers', tmp_path/'papers',
                          '--runs', tmp_path/'runs', '--no-progress'], start_new_session=True)
    deadline = time.time() + 120
    status = None
    while time.time() < deadline and not status:
        status = next((tmp_path/'runs').glob('slow/*/status.json'), None)
        time.sleep(0.2)
    assert status, 'no status.json'
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    rows = json.loads(cli('runs', '--runs', tmp_path/'runs', '--json').stdout)
    assert [r['state'] for r in rows] == ['crashed'], rows
    assert json.loads(status.read_text())['host']

def test_running_paper_is_not_cleaned(tmp_path):
    write_paper(tmp_path/'papers'/'slow.ipynb')
    p = subprocess.Popen([tool('medsynth'), 'paper', 'slow', '-p', 'wait', '60', '--papers', tmp_path/'papers',
                          '--runs', tmp_path/'runs', '--no-progress'], start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((tmp_path/'runs').glob('slow/*/status.json')): time.sleep(0.2)
        d = next((tmp_path/'runs'/'slow').iterdir())
        assert cli('runs', 'clean', '--keep', '0', '--runs', tmp_path/'runs').returncode == 0
        assert d.exists() and [r['state'] for r in json.loads(cli('runs', '--runs', tmp_path/'runs', '--json').stdout)] == ['running']
    finally: os.killpg(p.pid, signal.SIGKILL); p.wait()

# --- --overwrite replaces only what medsynth made for that purpose -----------------------------------------------

@pytest.mark.parametrize('target', ['run', 'data', 'cwd', 'parent', 'unmarked'])
def test_sample_overwrite_refuses_what_it_did_not_make(run, data, tmp_path, target):
    mine = tmp_path/'mine'; mine.mkdir(); (mine/'keep.txt').write_text('mine')
    out, cwd = dict(run=run, data=data/'sub', cwd='.', parent=run.parent, unmarked=mine)[target], tmp_path
    if target == 'cwd': cwd = mine
    watched = dict(run=run, data=data/'sub', cwd=mine, parent=run.parent, unmarked=mine)[target]
    before = snapshot(watched)
    r = cli('sample', run, '--n', 1, '--steps', 2, '--out', out, '--overwrite', '--no-progress', cwd=cwd)
    one_line_error(r, '--overwrite')
    assert snapshot(watched) == before

def test_sample_overwrite_replaces_its_own_output(run, tmp_path):
    out = tmp_path/'s'
    assert cli('sample', run, '--n', 1, '--steps', 2, '--out', out, '--no-progress').returncode == 0
    r = cli('sample', run, '--n', 2, '--steps', 2, '--out', out, '--overwrite', '--no-progress')
    assert r.returncode == 0, r.stderr
    assert len(list(csv.DictReader(open(out/'manifest.csv')))) == 6

@pytest.mark.parametrize('target', ['data', 'synthetic', 'cwd', 'unmarked'])
def test_eval_overwrite_refuses_what_it_did_not_make(data, tmp_path, target):
    real = data/'sub'
    syn = tmp_path/'syn'; syn.mkdir()
    mine = tmp_path/'mine'; mine.mkdir(); (mine/'keep.txt').write_text('mine')
    out = dict(data=real, synthetic=syn, cwd='.', unmarked=mine)[target]
    watched = dict(data=real, synthetic=syn, cwd=mine, unmarked=mine)[target]
    before = snapshot(watched)
    r = cli('eval', '--real', real, '--synthetic', syn, '--out', out, '--overwrite', '--no-progress',
            cwd=mine if target == 'cwd' else tmp_path)
    one_line_error(r, '--overwrite')
    assert snapshot(watched) == before

def test_train_overwrite_refuses_an_unmarked_folder(data, tmp_path):
    mine = tmp_path/'mine'; (mine/'checkpoints').mkdir(parents=True); (mine/'checkpoints'/'notes.txt').write_text('x')
    r = cli('train', f'data={data/"sub"}', 'epochs=1', *NET, '--run', mine, '--overwrite', '--no-progress')
    one_line_error(r, 'not made by medsynth')
    assert (mine/'checkpoints'/'notes.txt').exists()

# --- one writer per run folder ------------------------------------------------------------------------------------

def _start_long_training(data, run):
    p = subprocess.Popen([tool('medsynth'), 'train', f'data={data/"sub"}', 'epochs=500', *NET, '--run', run, '--no-progress'],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run/'config.yaml').exists(): time.sleep(0.1)
    assert (run/'config.yaml').exists(), p.stderr.read() if p.poll() is not None else 'no config.yaml'
    return p

def test_second_writer_is_refused(data, tmp_path):
    run = tmp_path/'busy'
    p = _start_long_training(data, run)
    try:
        for extra in ([], ['--overwrite'], ['--resume']):
            r = cli('train', f'data={data/"sub"}', 'epochs=500', *NET, '--run', run, '--no-progress', *extra)
            one_line_error(r, f'pid {p.pid}')
        assert (run/'config.yaml').exists() and p.poll() is None
    finally: p.kill(); p.wait()

# --- papers are names, not paths --------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['../tiny', '/tmp/tiny', 'sub/tiny'])
def test_paper_name_is_not_a_path(tmp_path, name):
    write_paper(tmp_path/'papers'/'tiny.ipynb')
    write_paper(tmp_path/'papers'/'sub'/'tiny.ipynb')
    r = cli('paper', name, '--papers', tmp_path/'papers', '--runs', tmp_path/'runs')
    one_line_error(r, 'paper name')
    assert not (tmp_path/'runs').exists()

# --- validation before anything is written ------------------------------------------------------------------------

@pytest.mark.parametrize('bad,message', [
    ('epochs=0', 'epochs=0'), ('epochs=-3', 'epochs=-3'), ('size=[0,0]', 'size'), ('ema_beta=1.5', 'ema_beta=1.5'),
    ('ema_beta=1', 'ema_beta=1'), ('lr=0', 'lr=0'), ('batch_size=0', 'batch_size=0'), ('epochs=ten', 'epochs'),
    ('cfg_dropout=2', 'cfg_dropout=2'), ('valid_frac=1.5', 'valid_frac=1.5'), ('sample_steps=0', 'sample_steps=0'),
    ('accumulate=0', 'accumulate=0'), ('timesteps=0', 'timesteps=0'), ('gamma=-1', 'gamma=-1'), ('wd=-1', 'wd=-1'),
    ('clip=0', 'clip=0'), ('max_minutes=-1', 'max_minutes=-1'), ('save_every=0', 'save_every=0'), ('warmup=1.5', 'warmup'),
    ('channels=[16,0]', 'channels'), ('seed=-1', 'seed=-1'), ('size=[64,', 'size'),
])
def test_bad_config_values_are_one_line_and_write_nothing(data, tmp_path, bad, message):
    args = [a for a in NET if a.split('=')[0] != bad.split('=')[0]]
    r = cli('train', f'data={data/"sub"}', 'epochs=1', *args, bad, '--run', tmp_path/'r', '--no-progress')
    one_line_error(r, message)
    assert not (tmp_path/'r').exists()

def test_failed_start_leaves_nothing(data, tmp_path):
    "The data hold fewer training samples than one batch: known only after the data are read; the folder must not stay."
    args = [a for a in NET if not a.startswith('batch_size')]
    r = cli('train', f'data={data/"sub"}', 'epochs=1', *args, 'batch_size=512', '--run', tmp_path/'r', '--no-progress')
    one_line_error(r, 'fewer than one batch')
    assert not (tmp_path/'r').exists()
    r = cli('train', f'data={data/"sub"}', 'epochs=1', *NET, '--run', tmp_path/'r', '--no-progress')   # no --overwrite needed
    assert r.returncode == 0, r.stderr[-2000:]

def test_bad_yaml_file_names_the_file(tmp_path):
    (tmp_path/'c.yaml').write_text("epochs: [1,\n")
    one_line_error(cli('train', tmp_path/'c.yaml', '--run', tmp_path/'r'), 'c.yaml')
    (tmp_path/'d.yaml').mkdir()
    one_line_error(cli('train', tmp_path/'d.yaml', '--run', tmp_path/'r'), 'd.yaml')
    assert not (tmp_path/'r').exists()

def test_os_errors_are_one_line(data, tmp_path):
    (tmp_path/'file').write_text('x')
    r = cli('train', f'data={data/"sub"}', 'epochs=1', *NET, '--run', tmp_path/'file'/'run', '--no-progress')
    one_line_error(r, str(tmp_path/'file'))

def test_debug_shows_the_traceback(tmp_path):
    r = cli('--debug', 'train', 'epochs=0', '--run', tmp_path/'r')
    assert r.returncode != 0 and 'Traceback' in r.stderr

@pytest.mark.parametrize('flag', [['--steps', '0'], ['--batch-size', '0'], ['--n', '0'], ['--steps', '-2']])
def test_bad_flag_values_are_errors(run, tmp_path, flag):
    r = cli('sample', run, *flag, '--out', tmp_path/'s', '--no-progress')
    assert r.returncode == 2 and flag[0] in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path/'s').exists()

@pytest.mark.parametrize('damage,message', [('empty', 'empty'), ('truncated', 'truncated'), ('random', 'not a PyTorch checkpoint'),
                                            ('architecture', 'does not fit')])
def test_damaged_checkpoint_says_what_is_wrong(run, tmp_path, damage, message):
    bad = tmp_path/'bad'
    shutil.copytree(run, bad)
    ck = bad/'checkpoints'/'last.pt'
    if damage == 'empty': ck.write_bytes(b'')
    if damage == 'truncated': ck.write_bytes(ck.read_bytes()[:len(ck.read_bytes()) // 2])
    if damage == 'random': ck.write_bytes(np.random.default_rng(0).bytes(4096))
    if damage == 'architecture':
        state = torch.load(ck, weights_only=True)
        state['config']['channels'] = [16, 48]
        torch.save(state, ck)
    one_line_error(cli('sample', bad, '--n', 1, '--steps', 2, '--out', tmp_path/'s', '--no-progress'), str(ck), message)

@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get('CI'), reason='mounting a small tmpfs needs root')
def test_disk_full_is_one_line(data, tmp_path):
    full = tmp_path/'full'; full.mkdir()
    m = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', str(full)], capture_output=True, text=True)
    assert m.returncode == 0, m.stderr
    try:
        r = cli('train', f'data={data/"sub"}', 'epochs=1', *NET, '--run', full/'run', '--no-progress')
        one_line_error(r, 'No space left on device', str(full))
    finally: subprocess.run(['umount', str(full)])

# --- samples: image i of seed s is fixed, whatever the batch size --------------------------------------------------

def _images(folder):
    rows = [r for r in csv.DictReader(open(folder/'manifest.csv')) if r['key'] == 't1ce']
    return [np.asarray(Image.open(folder/r['file'])) for r in rows]

@pytest.mark.parametrize('sampler', ['dpmpp_2m', 'ddpm'])
def test_sample_seed_is_per_image(run, tmp_path, sampler):
    def sample(seed, bs):
        out = tmp_path/f'{seed}-{bs}'
        r = cli('sample', run, '--n', 4, '--steps', 3, '--sampler', sampler, '--seed', seed, '--batch-size', bs, '--out', out,
                '--no-progress')
        assert r.returncode == 0, r.stderr
        return _images(out)
    a, b, c = sample(0, 4), sample(0, 1), sample(1, 3)
    for x, y in zip(a, b): np.testing.assert_array_equal(x, y)
    for x in a:
        for y in c: assert np.abs(x.astype(int) - y.astype(int)).max() > 0
    assert len({x.tobytes() for x in a}) == 4

# --- logs: a resumed run's history holds each epoch once -------------------------------------------------------------

def test_resume_from_an_earlier_checkpoint_logs_each_epoch_once(data, tmp_path):
    base = [f'data={data/"sub"}', *NET, '--no-progress']
    assert cli('train', 'epochs=1', *base, '--run', tmp_path/'one').returncode == 0
    assert cli('train', 'epochs=2', *base, '--run', tmp_path/'two').returncode == 0
    shutil.copy(tmp_path/'one'/'checkpoints'/'last.pt', tmp_path/'two'/'checkpoints'/'last.pt')  # died before epoch 2's checkpoint
    r = cli('train', 'epochs=2', *base, '--run', tmp_path/'two', '--resume')
    assert r.returncode == 0, r.stderr[-2000:]
    assert pd.read_csv(tmp_path/'two'/'logs'/'history.csv').epoch.tolist() == [0, 1]
