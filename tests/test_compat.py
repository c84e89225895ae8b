"Run folders written by an earlier medsynth still load and sample the same images (fixtures/v0: written by 0.0.1, before the layers became subpackages)."
import csv, shutil
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from conftest import cli

V0 = Path(__file__).parent/'fixtures'/'v0'

def _rows(p): return list(csv.DictReader(open(p/'manifest.csv')))

def _same_images(out, expected):
    rows = _rows(out)                     # later versions add manifest columns (guidance); the old ones keep their values
    assert [{k: r[k] for k in e} for r, e in zip(rows, _rows(expected))] == _rows(expected)
    for r in _rows(expected):
        a, b = (np.asarray(Image.open(d/r['file']), dtype=int) for d in (out, expected))
        assert a.shape == b.shape and np.abs(a - b).max() <= 1, r['file']   # one grey level: float rounding across machines

@pytest.fixture
def v0(tmp_path):
    "A copy of the fixture runs, so that nothing is written into the repository."
    shutil.copytree(V0, tmp_path/'v0')
    return tmp_path/'v0'

@pytest.mark.parametrize('run, args', [('bravo', ['--cond-data', 'data']), ('class', ['--label', '1'])])
def test_v0_run_samples_the_same_images(v0, run, args):
    args = [str(v0/a) if a == 'data' else a for a in args]
    r = cli('sample', v0/f'run-{run}', '--n', 2, '--steps', 3, '--seed', 7, *args, '--out', v0/'out', '--no-progress')
    assert r.returncode == 0, r.stderr[-2000:]
    _same_images(v0/'out', V0/f'expected-{run}')
