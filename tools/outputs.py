"""`make outputs`: run every library notebook (nbs/**, guides included; papers/ are run by their own sweeps) with
nbdev-test's runner and save the outputs into the notebooks, then nbdev-clean them. The run is made reproducible and
compact through an IPython profile that nbdev-test loads (its `exec_profile` default) from a private IPYTHONDIR:
seeds fixed, figures as plain PNG at a low dpi instead of retina, a fixed terminal width. `python tools/outputs.py
[NB ...] [--n-workers N]`; with no notebook, all of nbs/. tests/test_outputs.py guards the result."""
import argparse, json, os, re, sys, subprocess, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DPI = 60          # a 6x4 in figure is then 360x240 px: legends stay legible, ~20-60 kB of PNG

# Runs in each notebook's shell after nbdev's own setup (which selects retina PNG), before the first cell.
STARTUP = f"""
import os, random
import numpy as np
import matplotlib
from matplotlib_inline.backend_inline import set_matplotlib_formats
set_matplotlib_formats('png')
matplotlib.rcParams.update({{'figure.dpi': {DPI}, 'savefig.dpi': {DPI}, 'svg.hashsalt': 'medsynth'}})
random.seed(0); np.random.seed(0)
import warnings    # the dependencies' deprecation notices are noise to a reader; medsynth's own warnings stay
for m in ('torch', 'torchvision', 'lpips', 'timm', 'monai', 'diffusers', 'fastai', 'fastcore', 'sklearn', 'skimage',
          'scipy', 'pydicom', 'nibabel', 'PIL', 'pandas', 'matplotlib', 'ema_pytorch'):
    warnings.filterwarnings('ignore', module=m + r'(\.|$)')
try:
    import torch
    torch.manual_seed(0); torch.use_deterministic_algorithms(True, warn_only=True)
except ImportError: pass
"""

def profile_dir(parent:Path) -> Path:
    "An IPYTHONDIR under `parent` whose default profile runs `STARTUP`."
    d = parent/'ipython'; (d/'profile_default'/'startup').mkdir(parents=True)
    (d/'profile_default'/'startup'/'00_medsynth_outputs.py').write_text(STARTUP)
    return d

def env(ipython_dir:Path) -> dict:
    "The environment of the run: one thread per worker, no colour codes, a fixed width, fixed hashes."
    return dict(os.environ, IPYTHONDIR=str(ipython_dir), OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', COLUMNS='100',
                PYTHONHASHSEED='0', CUBLAS_WORKSPACE_CONFIG=':4096:8', NO_COLOR='1')

def scrub(nb:Path, tmp:Path):
    "Write `nb`'s text outputs without the run's temporary folders (-> $TMP), the checkout's path (-> .) and addresses."
    subs = [(re.compile(re.escape(str(tmp)) + r'(/tmp\w{8})?'), '$TMP'), (re.compile(re.escape(str(ROOT)) + '/?'), './'),
            (re.compile(r' at 0x[0-9a-fA-F]{6,}'), '')]
    def fix(v):
        if isinstance(v, list): return [fix(o) for o in v]
        for rx, to in subs: v = rx.sub(to, v)
        return v
    d = json.loads(nb.read_text())
    for c in d['cells']:
        for o in c.get('outputs', []):
            if 'text' in o: o['text'] = fix(o['text'])
            for k in o.get('data', {}):
                if k.startswith('text/'): o['data'][k] = fix(o['data'][k])
    t = nb.with_suffix('.tmp'); t.write_text(json.dumps(d, indent=1, ensure_ascii=False) + '\n'); t.replace(nb)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('nbs', nargs='*', help='notebooks to run (default: every notebook under nbs/)')
    p.add_argument('--n-workers', type=int, default=2)
    a = p.parse_args(argv)
    bin_ = Path(sys.executable).parent
    targets = [str(Path(n).resolve()) for n in a.nbs] or [str(ROOT/'nbs')]
    with tempfile.TemporaryDirectory(prefix='medsynth-outputs-') as tmp:
        e = env(profile_dir(Path(tmp)))
        e['TMPDIR'] = str(Path(tmp)/'t'); (Path(tmp)/'t').mkdir()      # the notebooks' temporary folders, scrubbed below
        for t in targets:
            cmd = [str(bin_/'nbdev-test'), '--save', '--timing', '--n-workers', str(a.n_workers), t]
            failed = subprocess.run(cmd, cwd=ROOT, env=e).returncode
            for nb in ([Path(t)] if t.endswith('.ipynb') else sorted(Path(t).rglob('*.ipynb'))): scrub(nb, Path(tmp)/'t')
            if failed: sys.exit(f'outputs: {t} failed; the failing notebooks were not saved (the others were)')
    for t in targets: subprocess.run([str(bin_/'nbdev-clean'), '--fname', t], cwd=ROOT, check=True)   # keeps outputs

if __name__ == '__main__': main()
