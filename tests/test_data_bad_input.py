"""Bad data, end to end: every case gives one line naming the file and the problem, from the
Python API (a `DataError`) and from `medsynth data check` (exit status 1), and nothing half-written.

Policy for a non-image file among images: skipped with a warning (datasets) and listed under
`skipped` (check), not an error: sidecar files (notes, Thumbs.db) are common and harmless, whereas a
file with an image extension that does not decode was meant to be data and is an error."""
import os, shutil, signal, stat, subprocess, time
import numpy as np, pytest
from conftest import tool, cli
from medsynth.core.io import DataError, atomic_path, write_png, write_nifti
from medsynth.data.phantoms import BrainPhantom, write_class_folders, write_subjects
from medsynth.data.datasets import ClassFolderDataset, SliceDataset, VolumeDataset

def check(*args): return cli('data', 'check', *args, timeout=300)

@pytest.fixture(scope='module')
def clean(tmp_path_factory):
    d = tmp_path_factory.mktemp('clean')
    write_class_folders(d/'classes', BrainPhantom(32, seed=0), 8)
    write_subjects(d/'subjects', BrainPhantom((32, 32, 20), seed=0), 3, modalities=('t1', 't1ce', 'seg'))
    return d

def copy(clean, tmp_path, name):
    shutil.copytree(clean/name, tmp_path/name); return tmp_path/name

def first_png(root): return sorted(root.rglob('*.png'))[0]

# Each case: build bad data from clean copies -> (path, file named in the error, problem text, how the Python API loads it).
def missing_path(clean, t): return t/'nope', 'nope', 'path not found', ClassFolderDataset
def empty_folder(clean, t): (t/'e').mkdir(); return t/'e', 'e', 'empty folder', ClassFolderDataset
def no_images(clean, t):
    (t/'r'/'a').mkdir(parents=True); (t/'r'/'a'/'readme.txt').write_text('x')
    return t/'r', 'r', 'holds no images', ClassFolderDataset
def corrupt_image(clean, t):
    r = copy(clean, t, 'classes'); (r/'lesion'/'bad.png').write_bytes(np.random.default_rng(0).bytes(500))
    return r, 'bad.png', 'cannot be decoded', ClassFolderDataset
def truncated_image(clean, t):
    r = copy(clean, t, 'classes'); f = first_png(r); f.write_bytes(f.read_bytes()[:100])
    return r, f.name, 'cannot be decoded', ClassFolderDataset
def mixed_channels(clean, t):
    r = copy(clean, t, 'classes'); write_png(r/'lesion'/'zz_rgb.png', np.random.default_rng(0).random((3, 32, 32)))
    return r, 'zz_rgb.png', 'is RGB but', ClassFolderDataset
def smaller_than_crop(clean, t):
    r = copy(clean, t, 'classes')
    return r, first_png(r).name, 'smaller than the crop size 48x48', lambda p: ClassFolderDataset(p, size=48, fit_mode='crop')
def nifti_nan(clean, t):
    r = copy(clean, t, 'subjects'); v = np.full((32, 32, 20), 100., np.float32); v[3, 3, 3] = np.nan; v[4, 4, 4] = np.inf
    write_nifti(r/'sub-0001'/'sub-0001_t1.nii.gz', v); return r, 'sub-0001_t1.nii.gz', '1 NaN and 1 Inf voxels', SliceDataset
def all_zero(clean, t):
    r = copy(clean, t, 'subjects'); write_nifti(r/'sub-0002'/'sub-0002_t1ce.nii.gz', np.zeros((32, 32, 20), np.float32))
    return r, 'sub-0002_t1ce.nii.gz', 'volume is all zero', SliceDataset
def missing_modality(clean, t):
    r = copy(clean, t, 'subjects'); (r/'sub-0001'/'sub-0001_t1ce.nii.gz').unlink()
    return r, 'sub-0001', "no file for modality 't1ce'", SliceDataset
def mask_mismatch(clean, t):
    r = copy(clean, t, 'subjects'); write_nifti(r/'sub-0000'/'sub-0000_seg.nii.gz', np.zeros((32, 30, 20), np.uint8))
    return r, 'sub-0000_seg.nii.gz', 'mask shape (32, 30, 20) does not match t1 shape (32, 32, 20)', VolumeDataset

CASES = [missing_path, empty_folder, no_images, corrupt_image, truncated_image, mixed_channels, smaller_than_crop,
         nifti_nan, all_zero, missing_modality, mask_mismatch]

@pytest.mark.parametrize('case', CASES, ids=[c.__name__ for c in CASES])
def test_python_api_raises_one_line_naming_the_file(case, clean, tmp_path):
    path, name, problem, load = case(clean, tmp_path)
    with pytest.raises(DataError) as e: load(path)
    msg = str(e.value)
    assert name in msg and '\n' not in msg, msg
    if case not in (empty_folder, no_images): assert problem in msg, msg   # the dataset words these two its own way

@pytest.mark.parametrize('case', CASES, ids=[c.__name__ for c in CASES])
def test_cli_check_exits_nonzero_and_names_the_file(case, clean, tmp_path):
    path, name, problem, _ = case(clean, tmp_path)
    extra = ('--size', 48, 48, '--fit', 'crop') if case is smaller_than_crop else ()
    r = check(path, *extra)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stdout + r.stderr
    lines = [l for l in r.stdout.splitlines() if problem in l]
    assert any(name in l for l in lines) and all(l.strip().startswith(str(tmp_path)) for l in lines), r.stdout   # each problem line starts with its file

def test_non_image_file_is_skipped_with_a_warning(clean, tmp_path):
    r = copy(clean, tmp_path, 'classes'); (r/'lesion'/'notes.txt').write_text('scanner log')
    with pytest.warns(UserWarning, match='skipped 1 non-image files: lesion/notes.txt'): ds = ClassFolderDataset(r)
    assert len(ds) == 8
    out = check(r)
    assert out.returncode == 0 and 'skipped: 1 non-image files' in out.stdout and 'lesion/notes.txt' in out.stdout

def test_clean_data_checks_clean(clean):
    for name in ('classes', 'subjects'):
        r = check(clean/name); assert r.returncode == 0 and 'no problems found' in r.stdout, r.stdout

def test_failed_disk_cache_leaves_nothing(clean, tmp_path):
    path, *_ = nifti_nan(clean, tmp_path)
    with pytest.raises(DataError): SliceDataset(path, cache='disk', cache_dir=tmp_path/'cache')
    assert not list((tmp_path/'cache').glob('*')) if (tmp_path/'cache').exists() else True

def test_phantom_cli_bad_arguments_write_nothing(tmp_path):
    r = cli('data', 'phantom', tmp_path/'out', '--size', 8)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'phantom sizes are 16 to 256' in r.stderr
    assert not (tmp_path/'out').exists()

def test_killed_phantom_writer_leaves_no_partial_folder(tmp_path):
    "SIGKILL while writing: the output folder is either absent or complete, never partial."
    p = subprocess.Popen([tool('medsynth'), 'data', 'phantom', str(tmp_path/'out'), '--layout', 'subjects', '--size', '64', '--n', '50'])
    deadline = time.time() + 120
    while time.time() < deadline and not any(tmp_path.glob('.out.*/sub-0002')): time.sleep(0.05)
    assert any(tmp_path.glob('.out.*/sub-0002')), 'writer never started'
    p.send_signal(signal.SIGKILL); p.wait()
    assert not (tmp_path/'out').exists()

# --- permissions --------------------------------------------------------------------------------------
# Outputs get the permissions the user's umask asks for, as `mkdir` and `open` give them: on a shared cluster a group
# (or everyone) must be able to read the data and runs. A temporary folder from `tempfile.mkdtemp` is 0700 whatever
# the umask, so a folder renamed into place from one would be private.

@pytest.fixture(params=[0o022, 0o002, 0o077], ids=['umask022', 'umask002', 'umask077'])
def umask(request):
    old = os.umask(request.param)
    try: yield request.param
    finally: os.umask(old)

def mode(p): return stat.S_IMODE(os.stat(p).st_mode)

def test_atomic_writes_follow_the_umask(umask, tmp_path):
    folder, file = 0o777 & ~umask, 0o666 & ~umask
    with atomic_path(tmp_path/'new'/'a.txt') as p: p.write_text('x')          # creates the folder 'new' too
    with atomic_path(tmp_path/'run', is_dir=True) as p: (p/'sub').mkdir(); (p/'sub'/'b.txt').write_text('y')
    write_png(tmp_path/'pngs'/'c.png', np.zeros((8, 8))); write_nifti(tmp_path/'d.nii.gz', np.zeros((4, 4, 4), np.float32))
    assert {str(q.relative_to(tmp_path)): oct(mode(q)) for q in tmp_path.rglob('*')} == \
        {**{k: oct(folder) for k in ('new', 'run', 'run/sub', 'pngs')}, **{k: oct(file) for k in ('new/a.txt', 'run/sub/b.txt', 'pngs/c.png', 'd.nii.gz')}}
    with atomic_path(tmp_path/'run', is_dir=True) as p: (p/'e.txt').write_text('z')   # replacing an existing folder
    assert mode(tmp_path/'run') == folder and mode(tmp_path/'run'/'e.txt') == file and not (tmp_path/'run'/'sub').exists()

def test_phantom_folders_follow_the_umask(tmp_path):
    "End to end through a writer built on atomic_path(is_dir=True): every folder and file of a phantom data set."
    old = os.umask(0o022)
    try: write_subjects(tmp_path/'subjects', BrainPhantom((16, 16, 16), seed=0), 2, modalities=('t1', 'seg'))
    finally: os.umask(old)
    modes = {q.is_dir(): set() for q in tmp_path.rglob('*')}
    for q in tmp_path.rglob('*'): modes[q.is_dir()].add(oct(mode(q)))
    assert modes == {True: {'0o755'}, False: {'0o644'}}, modes

def test_lesion_scale_scales_the_lesions_and_bad_values_are_one_line(tmp_path):
    "Radii exactly x lesion_scale; the measured area about x scale^2, a little less (clipped by brain and ventricles)."
    import json
    one, two = BrainPhantom(32, prevalence=1., seed=7), BrainPhantom(32, prevalence=1., seed=7, lesion_scale=2)
    for i in range(5):
        a1, a2 = one.anatomy(i), two.anatomy(i)
        assert a1['label'] == a2['label']
        assert np.allclose(a2['lesions'][0]['radii'], 2 * a1['lesions'][0]['radii'], rtol=1e-12)
    ratio = two.stats(40)['area']['mean'] / one.stats(40)['area']['mean']
    assert 3 < ratio < 4, ratio                    # seeds 0-5 (nbs/30): 3.34-3.70
    write_subjects(tmp_path/'s', BrainPhantom((16, 16, 16), prevalence=1., seed=0, lesion_scale=1.5), 1,
                   modalities=('seg',))
    assert json.loads((tmp_path/'s'/'phantom.json').read_text())['truth']['lesion_scale'] == 1.5
    same = BrainPhantom(32, seed=7, lesion_scale=1.).render(3)['t1']
    assert np.array_equal(same, BrainPhantom(32, seed=7).render(3)['t1'])             # the default is the old phantom
    for bad in (0, -1, float('nan'), float('inf'), '2'):
        with pytest.raises(ValueError) as e: BrainPhantom(32, lesion_scale=bad)
        assert 'lesion_scale=' in str(e.value) and 'must be a number > 0' in str(e.value) and '\n' not in str(e.value)
