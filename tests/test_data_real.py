"""The readers on real files that ship inside installed packages (nilearn's MNI152 2009a template and
tissue maps, pydicom's CT and MR test files), each compared with an independent oracle: nibabel,
pydicom and MONAI read the same files, and numpy recomputes the documented normalisation."""
import shutil
from pathlib import Path
from types import SimpleNamespace
import numpy as np, pytest
import nibabel as nib, nilearn, pydicom
from pydicom.data import get_testdata_file
from monai.transforms import LoadImage, EnsureChannelFirst, Orientation
from medsynth.core.io import DataError, read_nifti, read_dicom, read_volume
from medsynth.data.datasets import find_subjects, load_subject, SliceDataset, VolumeDataset
from medsynth.data.datacheck import check_data
from conftest import cli

try: from pydicom.pixels import apply_modality_lut                       # pydicom >= 3
except ImportError: from pydicom.pixel_data_handlers.util import apply_modality_lut

def mni(kind='t1'): return Path(nilearn.__file__).parent/'datasets'/'data'/f'mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz'
def canonical(p): return nib.as_closest_canonical(nib.load(str(p))).get_fdata(dtype=np.float32)
def monai_ras(p, reader):
    "MONAI's array after EnsureChannelFirst + Orientation('RAS') (LoadImage alone keeps the file's voxel order)."
    return np.asarray(Orientation('RAS')(EnsureChannelFirst()(LoadImage(image_only=True, reader=reader)(str(p))))[0])

@pytest.fixture(scope='module')
def subject(tmp_path_factory):
    "A BraTS-like folder root/mni/{mni_t1,mni_seg}.nii.gz: the real T1 template and a GM mask on its grid."
    root = tmp_path_factory.mktemp('mni'); d = root/'mni'; d.mkdir()
    shutil.copy(mni('t1'), d/'mni_t1.nii.gz')
    t1, gm = nib.load(str(mni('t1'))), nib.load(str(mni('gm')))
    p = gm.get_fdata(); p = p/255 if p.max() > 1 else p                  # this copy stores probabilities as uint8 0..255
    mask = (p > 0.5).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, t1.affine), str(d/'mni_seg.nii.gz'))
    assert nib.aff2axcodes(t1.affine) == ('R', 'A', 'S')                 # so the arrays below are canonical as stored
    return SimpleNamespace(root=root, x=t1.get_fdata(), mask=mask)

# --- NIfTI ------------------------------------------------------------------------------------------

def test_nifti_matches_nibabel():
    p = mni('t1'); want = canonical(p)
    for v in (read_nifti(p), read_volume(p)):
        assert v.array.shape == (197, 233, 189) and v.array.dtype == np.float32
        np.testing.assert_array_equal(v.array, want)
        assert v.spacing == tuple(float(z) for z in nib.load(str(p)).header.get_zooms()[:3])

@pytest.fixture(scope='module')
def reoriented(tmp_path_factory):
    """The T1 stored as (I, R, A) voxel order, anisotropic: nibabel's canonical form is the template itself.
    The template is RAS on disk, so without this copy no test would show that read_nifti reorients."""
    a = np.asarray(nib.load(str(mni('t1'))).dataobj)                    # uint8, no scaling: small and exact
    b = np.flip(a, 2).transpose(2, 0, 1)                                 # b[i, j, k] = a[j, k, Z-1-i]
    P = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [-1, 0, 0, a.shape[2] - 1], [0, 0, 0, 1]], float)
    f = tmp_path_factory.mktemp('reo')/'t1_ira.nii'
    nib.save(nib.Nifti1Image(np.ascontiguousarray(b), np.diag([1., 1.2, 1.5, 1.]) @ P), str(f))
    assert nib.aff2axcodes(nib.load(str(f)).affine) == ('I', 'R', 'A')
    return f, a.astype(np.float32)

def test_nifti_reorients_to_ras(reoriented):
    f, a = reoriented; v = read_nifti(f)
    np.testing.assert_array_equal(v.array, a)                            # the voxel order we built it from
    assert v.spacing == pytest.approx((1., 1.2, 1.5))                    # zooms follow the axes (on disk 1.5, 1, 1.2)

def test_nifti_matches_monai(reoriented):
    # MONAI's NibabelReader does not reorient by default (it returns the file's voxel order with the affine in the
    # metadata), so the comparison is after EnsureChannelFirst + Orientation('RAS'): on the RAS template that is a
    # no-op, on the (I, R, A) copy it must undo the permutation and flip just as nibabel's as_closest_canonical does.
    for p in (mni('t1'), reoriented[0]):
        np.testing.assert_array_equal(read_nifti(p).array, monai_ras(p, 'NibabelReader'))

# --- subject folder -> datasets ---------------------------------------------------------------------

def oracle_normalise(x, lo=0.5, hi=99.5):
    "The documented rule: clip to the [0.5, 99.5] percentiles of the non-zero voxels, map linearly to [-1, 1]."
    lo, hi = np.percentile(x[x != 0], [lo, hi])
    return 2 * (np.clip(x, lo, hi) - lo) / (hi - lo) - 1, lo, hi

def test_load_subject_percentiles(subject):
    sub, = find_subjects(subject.root, ('t1', 'seg'))
    assert (sub['t1'].name, sub['seg'].name) == ('mni_t1.nii.gz', 'mni_seg.nii.gz')
    out = load_subject(sub, ('t1', 'seg'))
    y = out['t1'][0]; want, lo, hi = oracle_normalise(subject.x)
    assert y.shape == subject.x.shape and 0 < lo < hi
    np.testing.assert_allclose(y, want, atol=1e-5)
    assert (y[subject.x <= lo] == -1).all() and (y[subject.x >= hi] == 1).all()
    i = np.flatnonzero((subject.x.ravel() > lo) & (subject.x.ravel() < hi))[::100_000]   # a few voxels inside the range
    np.testing.assert_allclose(y.ravel()[i], 2 * (subject.x.ravel()[i] - lo) / (hi - lo) - 1, atol=1e-5)
    np.testing.assert_array_equal(out['mask'][0], subject.mask)          # binary mask on the native grid

def test_slice_dataset(subject):
    ds = SliceDataset(subject.root, ('t1', 'seg'), size=(64, 64))
    n = subject.x.shape[2]; ks = [k for _, k in ds.index]
    assert 0 < len(ds) < n
    # Content rule (documented default min_content=0.05): a slice is kept when >= 5% of its voxels are above
    # -0.8 after normalisation, i.e. above lo + 0.1 (hi - lo) in raw units. That threshold is an integer here
    # (voxels equal to it sit exactly on -0.8), so bound the kept set from both sides instead of asking for equality.
    _, lo, hi = oracle_normalise(subject.x); t = lo + 0.1 * (hi - lo)
    surely = np.flatnonzero((subject.x > t).mean((0, 1)) >= 0.05); maybe = np.flatnonzero((subject.x >= t).mean((0, 1)) >= 0.05)
    assert set(surely) <= set(ks) <= set(maybe)
    # The template is zero above the head (slices 155-188) and nearly empty at the bottom (0-12, < 5% content).
    empty = np.flatnonzero(~subject.x.any((0, 1)))
    assert len(empty) > 0 and not set(empty) & set(ks) and 0 not in ks
    for j in (0, len(ds) // 2, len(ds) - 1):
        item = ds[j]
        assert item['t1'].shape == item['mask'].shape == (1, 64, 64) and item['subject'] == 'mni'
        assert -1 <= item['t1'].min() and item['t1'].max() <= 1 and set(item['mask'].unique().tolist()) <= {0, 1}
    assert len(ds.arrays['t1']) == len(ds) and bool((ds.arrays['t1'].abs() <= 1).all())

def test_slice_dataset_foreground_only(subject):
    # The GM mask covers every slice with >= 5% content, so with the default min_content foreground_only would
    # drop nothing; min_content=0 keeps every slice, and foreground_only must then keep exactly the slices whose
    # mask (on the native grid) has foreground. cache=None: only the index is built, no resizing.
    ds = SliceDataset(subject.root, ('t1', 'seg'), size=(64, 64), min_content=0., foreground_only=True, cache=None)
    ks = [k for _, k in ds.index]
    assert ks == np.flatnonzero(subject.mask.any((0, 1))).tolist() and len(ks) < subject.x.shape[2]
    m = load_subject(find_subjects(subject.root, ('t1', 'seg'))[0], ('t1', 'seg'))['mask'][0]
    assert all(m[..., k].any() for k in ks)

# --- check_data -------------------------------------------------------------------------------------

def test_check_data_subject_folder(subject):
    rep = check_data(subject.root)
    assert rep.ok, str(rep)
    assert rep.layout == 'subject folders' and rep.summary['modalities'] == 't1, seg' and rep.summary['subjects'] == 1
    assert rep.summary['t1'].startswith('shapes 197x233x189 (1); spacing 1x1x1 (1) mm; intensity [0, 255]')

def test_check_data_single_volume():
    rep = check_data(mni('t1'))
    assert rep.ok and rep.layout == 'volume', str(rep)
    assert '197x233x189' in rep.summary['image']

# --- DICOM ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['CT_small.dcm', 'MR_small.dcm'])
def test_dicom_file_matches_pydicom(name):
    f = get_testdata_file(name); ds = pydicom.dcmread(f)
    lut = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    assert [float(x) for x in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]   # axial: LPS -> RAS flips x and y
    for v in (read_dicom(f), read_volume(f)):
        assert v.array.shape == (ds.Columns, ds.Rows, 1)                 # (x = columns, y = rows, one slice)
        np.testing.assert_array_equal(v.array[..., 0], lut.T[::-1, ::-1])
        assert v.spacing[:2] == (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]))
    if ds.Modality == 'CT':                                              # Hounsfield units, not stored values
        b = float(ds.RescaleIntercept); assert b != 0
        np.testing.assert_array_equal(v.array[..., 0] - ds.pixel_array.T[::-1, ::-1] * float(ds.RescaleSlope), b)

def test_dicom_spacing_order(tmp_path):
    # Both test files have square pixels, so a swapped (row, column) spacing would go unnoticed: make them not square.
    # PixelSpacing is (between rows = y, between columns = x); MONAI's PydicomReader is the second opinion.
    ds = pydicom.dcmread(get_testdata_file('CT_small.dcm')); ds.PixelSpacing = [0.5, 0.8]; ds.save_as(tmp_path/'a.dcm')
    assert read_dicom(tmp_path/'a.dcm').spacing[:2] == (0.8, 0.5)
    m = LoadImage(image_only=True, reader='PydicomReader')(str(tmp_path/'a.dcm'))
    assert tuple(float(s) for s in m.meta['spacing'][:2]) == (0.8, 0.5)

Z = (-75.7, -73.2, -70.7, -68.2, -65.7)       # positions 2.5 mm apart
NAMES = ('e', 'c', 'a', 'd', 'b')             # file name order: positions 2, 4, 1, 3, 0
INSTANCE = (3, 1, 5, 2, 4)                    # InstanceNumber order: positions 1, 3, 0, 4, 2

@pytest.fixture
def series(tmp_path):
    "Five CT_small slices, each with its own content (+100 k), neither file names nor InstanceNumbers in position order."
    d = tmp_path/'series'; d.mkdir()
    for k, (z, name, inst) in enumerate(zip(Z, NAMES, INSTANCE)):
        ds = pydicom.dcmread(get_testdata_file('CT_small.dcm'))
        ds.PixelData = (ds.pixel_array + 100 * k).astype(ds.pixel_array.dtype).tobytes()
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], z]; ds.InstanceNumber = inst
        ds.save_as(d/f'{name}.dcm')
    return d

def by_position(folder):
    "Oracle: every file read by pydicom, modality LUT applied, (cols, rows) flipped to RAS, stacked by ImagePositionPatient z."
    dss = sorted((pydicom.dcmread(f) for f in sorted(folder.iterdir())), key=lambda ds: float(ds.ImagePositionPatient[2]))   # ties: file name order
    return np.stack([apply_modality_lut(ds.pixel_array, ds).T[::-1, ::-1] for ds in dss], -1).astype(np.float32)

def test_dicom_series_order(series):
    for v in (read_dicom(series), read_volume(series)):
        np.testing.assert_array_equal(v.array, by_position(series))
        assert v.spacing == pytest.approx((0.661468, 0.661468, 2.5))
    ct = pydicom.dcmread(get_testdata_file('CT_small.dcm'))
    for k in range(len(Z)):                                              # slice k is the one written at Z[k]
        np.testing.assert_array_equal(v.array[..., k], (ct.pixel_array.T[::-1, ::-1] + 100 * k) * float(ct.RescaleSlope) + float(ct.RescaleIntercept))

def test_dicom_series_matches_monai(series):
    # MONAI's PydicomReader (swap_ij=True, the default) returns (columns, rows, slices), rescaled to float32, in
    # LPS voxel order (its LPS -> RAS conversion is in the affine only). It stacks slices by InstanceNumber, not by
    # position (monai/data/image_reader.py, _combine_dicom_series), so reorder its slices by position and flip x, y.
    m = np.asarray(LoadImage(image_only=True, reader='PydicomReader')(str(series)))
    z_of_instance = [Z[INSTANCE.index(i)] for i in sorted(INSTANCE)]
    v = read_dicom(series).array
    assert m.shape == v.shape == (128, 128, 5) and not np.array_equal(m[::-1, ::-1], v)   # the shuffle is visible to MONAI
    np.testing.assert_array_equal(m[::-1, ::-1][..., np.argsort(z_of_instance)], v)

def test_dicom_is_ras_like_nifti(tmp_path):
    # A consistent series (InstanceNumber follows position): MONAI's reader + Orientation('RAS') is an independent
    # RAS oracle, and a NIfTI copy of the same scan written with MONAI's affine reads back equal through read_nifti.
    d = tmp_path/'s'; d.mkdir()
    for k in range(3):
        ds = pydicom.dcmread(get_testdata_file('CT_small.dcm'))
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], -75.7 + 5 * k]; ds.InstanceNumber = k + 1; ds.save_as(d/f'{k}.dcm')
    v = read_dicom(d)
    np.testing.assert_array_equal(v.array, monai_ras(d, 'PydicomReader'))
    m = LoadImage(image_only=True, reader='PydicomReader')(str(d))
    nib.save(nib.Nifti1Image(np.asarray(m), np.asarray(m.affine)), str(tmp_path/'ct.nii.gz'))
    np.testing.assert_array_equal(v.array, read_nifti(tmp_path/'ct.nii.gz').array)
    assert v.spacing == pytest.approx((0.661468, 0.661468, 5.))

def test_dicom_two_series_raise(tmp_path):
    for k, uid in enumerate(('1.2.826.0.1.3680043.8.498.1', '1.2.826.0.1.3680043.8.498.2')):
        ds = pydicom.dcmread(get_testdata_file('CT_small.dcm')); ds.SeriesInstanceUID = uid
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], Z[k]]; ds.save_as(tmp_path/f'{k}.dcm')
    with pytest.raises(DataError, match='2 series'): read_dicom(tmp_path)

# --- DICOM slice spacing ----------------------------------------------------------------------------
# A series is stacked as if its slices were evenly spaced, so a missing slice (a gap of two spacings), a duplicate
# position (two files at one place) or uneven gaps would give a volume whose anatomy is silently stretched or
# doubled. The readers refuse them with a one-line DataError unless irregular='allow'; `medsynth data check` reports them.

def write_series(d, zs, instance=None):
    "CT_small slices at positions `zs` (mm along the normal, which is z for its axial orientation), content +100 k per file."
    d.mkdir(parents=True)
    for k, z in enumerate(zs):
        ds = pydicom.dcmread(get_testdata_file('CT_small.dcm'))
        ds.PixelData = (ds.pixel_array + 100 * k).astype(ds.pixel_array.dtype).tobytes()
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], z]; ds.InstanceNumber = k + 1
        ds.save_as(d/f'im{k:02d}.dcm')
    return d

MISSING = (-75.7, -73.2, -70.7, -65.7, -63.2)      # -68.2 is missing: a 5 mm gap between slices 3 and 4 (2.5 mm elsewhere)
DUPLICATE = (-75.7, -73.2, -73.2, -70.7, -68.2)    # two slices at -73.2
UNEVEN = (-75.7, -73.2, -70.7, -67.0, -64.5)       # a 3.7 mm gap: not a whole number of spacings

def test_dicom_missing_slice_refused(tmp_path):
    d = write_series(tmp_path/'series', MISSING)
    for read in (read_dicom, read_volume):
        with pytest.raises(DataError) as e: read(d)
        msg = str(e.value)
        assert '\n' not in msg and msg.startswith(str(d)), msg
        assert 'not evenly spaced: gap of 5 mm between slices 3 and 4 (im02.dcm, im03.dcm) where the series spacing is 2.5 mm (a missing slice?)' in msg, msg
        assert "irregular='allow'" in msg, msg                            # the fix names the escape hatch

def test_dicom_duplicate_position_refused(tmp_path):
    d = write_series(tmp_path/'series', DUPLICATE)
    with pytest.raises(DataError) as e: read_dicom(d)
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith(str(d)), msg
    assert 'duplicate slice position: slices 2 and 3 (im01.dcm, im02.dcm) are both at -73.2 mm' in msg, msg
    assert 'gap' not in msg and 'missing' not in msg, msg                # a duplicate is not reported as a gap

def test_dicom_uneven_gap_refused(tmp_path):
    d = write_series(tmp_path/'series', UNEVEN)
    with pytest.raises(DataError, match=r'gap of 3.7 mm between slices 3 and 4 .* where the series spacing is 2.5 mm \(irregular spacing\)'): read_dicom(d)

def test_dicom_irregular_allowed(tmp_path):
    "irregular='allow' stacks the slices in position order at the median gap between distinct positions."
    for zs, n in ((MISSING, 5), (DUPLICATE, 5), (UNEVEN, 5)):
        d = write_series(tmp_path/f'{zs[3]}', zs)
        for read in (read_dicom, read_volume):
            v = read(d, irregular='allow')
            assert v.array.shape == (128, 128, n) and v.spacing == pytest.approx((0.661468, 0.661468, 2.5))
            np.testing.assert_array_equal(v.array, by_position(d))
    with pytest.raises(ValueError, match="irregular='warn' is not allowed"): read_dicom(d, irregular='warn')

def test_dicom_rounding_is_regular(tmp_path):
    "Positions as scanners write them (decimal strings, a few micrometres off) are regular."
    zs = [round(-75.7 + 2.5 * k + (-1) ** k * 0.002, 4) for k in range(6)]
    v = read_dicom(write_series(tmp_path/'s', zs))
    assert v.array.shape[2] == 6 and v.spacing[2] == pytest.approx(2.5, abs=0.01)

def test_dicom_regular_series_still_loads(series):
    "The existing shuffled, regular series (positions 2.5 mm apart) reads as before, and as MONAI reads it."
    test_dicom_series_matches_monai(series)
    np.testing.assert_array_equal(read_dicom(series, irregular='error').array, read_dicom(series, irregular='allow').array)

@pytest.mark.parametrize('zs,words', [(MISSING, 'gap of 5 mm between slices 3 and 4'), (DUPLICATE, 'duplicate slice position')],
                         ids=['missing', 'duplicate'])
def test_check_data_reports_irregular_series(tmp_path, zs, words):
    d = write_series(tmp_path/'series', zs)
    rep = check_data(d)
    assert rep.layout == 'DICOM series' and not rep.ok, str(rep)
    assert len(rep.problems) == 1 and words in str(rep.problems[0]) and rep.problems[0].path == str(d), str(rep)
    r = cli('data', 'check', d, timeout=300)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stdout + r.stderr
    line, = [l.strip() for l in r.stdout.splitlines() if words in l]
    assert line.startswith(f'{d}: '), r.stdout
    r = cli('data', 'check', write_series(tmp_path/'ok', Z), timeout=300)
    assert r.returncode == 0 and 'no problems found' in r.stdout, r.stdout

def test_datasets_refuse_irregular_series_unless_allowed(tmp_path):
    "Subject folders with a `ct` DICOM series folder each: check_data and the datasets see the gap; irregular='allow' passes through."
    root = tmp_path/'subjects'
    write_series(root/'s0'/'ct', Z); write_series(root/'s1'/'ct', MISSING)
    rep = check_data(root)
    assert rep.layout == 'subject folders' and len(rep.problems) == 1, str(rep)
    assert str(rep.problems[0]).startswith(f"{root/'s1'/'ct'}: slice positions are not evenly spaced"), str(rep)
    for make in (lambda **kw: VolumeDataset(root, ('ct',), mask=None, **kw),
                 lambda **kw: SliceDataset(root, ('ct',), mask=None, size=(32, 32), **kw)):
        with pytest.raises(DataError, match='s1/ct: slice positions are not evenly spaced'): make()
        ds = make(irregular='allow')
        assert {ds[i]['subject'] for i in range(len(ds))} == {'s0', 's1'}
