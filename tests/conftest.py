import os, re, shutil, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

def tool(name):
    "Path of a console script installed beside the running interpreter."
    p = BIN / name
    if not p.exists(): raise FileNotFoundError(f"{p} not found: run `make install` (or `make test`) to create the virtual environment")
    return str(p)

def cli(*args, cwd=None, timeout=900, env=None) -> subprocess.CompletedProcess:
    "Run the `medsynth` console script as a user would (arguments as strings), capturing its output."
    return subprocess.run([tool('medsynth'), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)

@pytest.fixture(scope='session')
def phantoms(tmp_path_factory) -> Path:
    """Phantom data written once per session and shared by the test modules: `sub`, four subjects (t1, t1ce, seg;
    32 x 32 x 16, each with a lesion), and `cls`, class folders (three kinds, 40 images of 16 px). Read, never write."""
    from medsynth.data.phantoms import BrainPhantom, write_subjects, write_class_folders
    d = tmp_path_factory.mktemp('phantoms')
    write_subjects(d/'sub', BrainPhantom((32, 32, 16), prevalence=1., seed=0), 4, modalities=('t1', 't1ce', 'seg'))
    write_class_folders(d/'cls', BrainPhantom(16, classes='kinds', k=3, seed=0), 40)
    return d

def latent_testbed(d:Path, k:int, n:int, steps:int, batch_size:int, ae_batch_size:int=8, lr:float|None=None,
                   perceptual:bool=False) -> Path:
    """What latent diffusion with encoder features (M2D, REPA, REPA-E) needs, trained a few `steps` in `d`: `cls`, class
    folders of `k` kinds (`n` images of 32 px), `encoder.pt`, a domain encoder on their labels, and `autoencoder.pt`,
    a tiny VAE (factor 2; `perceptual`: with a perceptual term on that encoder). Returns `d`."""
    from medsynth.data.phantoms import BrainPhantom, write_class_folders
    from medsynth.evaluation.sets import read_set
    from medsynth.models.domain import train_encoder, save_encoder, load_encoder
    from medsynth.spaces.vae import AEConfig, train_autoencoder, latent_scale_factor, save_autoencoder, encoder_layers
    write_class_folders(d/'cls', BrainPhantom((32, 32), classes='kinds', k=k, seed=0), n)
    s = read_set(d/'cls'); assert len(s.classes) == k
    save_encoder(train_encoder(s.images, s.labels, steps=steps, batch_size=batch_size, widths=(8, 16, 16, 16), seed=0),
                 d/'encoder.pt')
    extra = dict(perceptual='encoder', perceptual_weight=0.1) if perceptual else {}
    ac = AEConfig(channels=(8, 16), latent_channels=2, nonlocal_attn=False, steps=steps, batch_size=ae_batch_size, seed=0,
                  **({} if lr is None else dict(lr=lr)), **extra)
    net = encoder_layers(load_encoder(d/'encoder.pt').eval()) if perceptual else None
    ae, _ = train_autoencoder(s.images * 2 - 1, ac, **({} if net is None else dict(perceptual_net=net)))
    save_autoencoder(ae, ac, latent_scale_factor(ae, s.images * 2 - 1), d/'autoencoder.pt')
    return d

def one_line_error(r, *parts):
    "Exit 2, one line on stderr starting `medsynth: error:`, no traceback, holding every part."
    err = r.stderr
    assert r.returncode == 2 and err.startswith('medsynth: error:') and err.count('\n') == 1, err[-3000:]
    assert 'Traceback' not in err, err
    for p in parts: assert p in err, (p, err)

# A real single-node SLURM cluster, started once per session for every test that asks for it (test_slurm.py, the README's
# SLURM commands in test_readme_commands.py), and stopped at the end by slurm/local/stop.sh (by PID) unless it was running
# before. It needs root (the daemons, /etc/slurm) and apt where SLURM is not installed; elsewhere its tests skip, except
# under CI (the environment variable CI set), where a missing cluster fails them.

def _no_cluster_reason() -> str|None:
    if os.geteuid() != 0: return "not root"
    if not all(shutil.which(x) for x in ('sbatch', 'slurmctld', 'slurmd', 'munged')) and not shutil.which('apt-get'):
        return "SLURM is not installed and apt-get is missing"
    return None

def _slurm_running() -> bool:
    return subprocess.run(['pgrep', '-x', 'slurmctld'], capture_output=True).returncode == 0

@pytest.fixture(scope='session')
def cluster():
    why = _no_cluster_reason()
    if why:
        msg = f"no local SLURM cluster: {why} (slurm/local/start.sh needs root, and apt where SLURM is missing)"
        if os.environ.get('CI'): pytest.fail(msg + "; CI is set, so the SLURM tests must run")
        pytest.skip(msg)
    was_running = _slurm_running()
    r = subprocess.run(['bash', str(ROOT/'slurm'/'local'/'start.sh')], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"could not start the local SLURM cluster (slurm/local/start.sh): {r.stderr[-1500:]}"
    yield
    if not was_running: subprocess.run(['bash', str(ROOT/'slurm'/'local'/'stop.sh')], capture_output=True, timeout=120)

def wait_for_job(job:str, timeout:float=600) -> dict:
    "Wait until SLURM job `job` (every array task) has left the queue; its final state per task (`{'0': 'COMPLETED', ...}`)."
    end = time.time() + timeout
    while subprocess.run(['squeue', '-h', '-j', str(job)], capture_output=True, text=True).stdout.strip():
        if time.time() > end:
            show = subprocess.run(['scontrol', 'show', 'job', str(job)], capture_output=True, text=True).stdout
            raise AssertionError(f"SLURM job {job} still queued after {timeout} s:\n{show[-1500:]}")
        time.sleep(0.5)
    out = subprocess.run(['scontrol', '-o', 'show', 'job', str(job)], capture_output=True, text=True).stdout
    states = {}
    for line in out.splitlines():
        task, state = re.search(r'\bArrayTaskId=(\S+)', line), re.search(r'\bJobState=(\S+)', line)
        if state: states[task[1] if task else str(job)] = state[1]
    return states
