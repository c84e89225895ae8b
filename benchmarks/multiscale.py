"""Single-scale against pyramid (cascaded) diffusion at equal training compute: quality and sampling time.

Both train the same config (dual mode: mask -> T1 and post-contrast T1 on phantom slices) with the same number of
training network evaluations (the pyramid's level networks share the single model's epochs); both sample the same
held-out masks. Quality: FID / KID on one domain encoder, phantom ground truth (intensity W1, lesion contrast error).
Cost: training seconds and sampling seconds per image, as ratios to the single-scale model measured in the same run.
Writes multiscale.md / multiscale.json.

    python benchmarks/multiscale.py [--out runs/benchmarks] [--size 64] [--levels 3] [--epochs 12] [--shared] [--small]
"""
from __future__ import annotations
import argparse, dataclasses, json, tempfile
from pathlib import Path
import torch
from medsynth.data.phantoms import BrainPhantom, write_subjects
from medsynth.training.config import make_config
from medsynth.systems.multiscale import compare_scales

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='runs/benchmarks'); p.add_argument('--size', type=int, default=64); p.add_argument('--levels', type=int, default=3)
    p.add_argument('--epochs', type=int, default=12); p.add_argument('--subjects', type=int, default=24); p.add_argument('--n', type=int, default=64)
    p.add_argument('--sample-steps', type=int, default=20); p.add_argument('--level-steps', type=int, nargs='+', help="pyramid steps per level, finest first")
    p.add_argument('--shared', action='store_true', help="one network for all levels"); p.add_argument('--small', action='store_true', help="a tiny run (tests)")
    a = p.parse_args(argv)
    if a.small: a.size, a.levels, a.epochs, a.subjects, a.n, a.sample_steps, a.level_steps = 32, 2, 2, 4, 8, 4, [3, 4]
    if min(a.size, a.levels, a.epochs, a.subjects, a.n, a.sample_steps) < 1: p.error('all numbers must be >= 1')
    ch = [8, 16] if a.small else [32, 64, 64]
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_subjects(tmp/'data', BrainPhantom((a.size, a.size, 24), prevalence=0.9, seed=0), a.subjects, modalities=('t1', 't1ce', 'seg'))
        try:
            cfg = make_config(dict(data=str(tmp/'data'), mode='dual', size=[a.size, a.size], channels=ch, attention_levels=[False] * (len(ch) - 1) + [True],
                                    num_head_channels=min(32, ch[-1]), epochs=a.epochs, batch_size=8 if a.small else 16, lr=2e-3, timestep_sampler='loss_aware',
                                    sample_steps=a.sample_steps, valid_frac=0.15, min_content=0.1, ema_after=20))
            make_config({**dataclasses.asdict(cfg), 'levels': a.levels, 'level_steps': a.level_steps}, where='pyramid')
        except ValueError as e: p.error(str(e))
        rows = compare_scales(cfg, tmp/'cmp', levels=a.levels, level_steps=a.level_steps, shared=a.shared, n=a.n, modality='t1ce', encoder_steps=20 if a.small else 300)
    single = rows[0]
    for r in rows: r['train_time_ratio'] = r['train_seconds'] / single['train_seconds']
    res = dict(size=a.size, levels=a.levels, epochs=a.epochs, n=a.n, threads=torch.get_num_threads(), table=rows)
    cols = ['train_epochs', 'train_time_ratio', 'sample_steps', 'sample_time_ratio', 'fid', 'kid', 'intensity_w1', 'contrast_error']
    f = lambda v: f'{v:.4f}' if isinstance(v, float) else str(v)
    md = '\n'.join([f"# Single scale vs pyramid ({a.size}x{a.size}, {a.levels} levels{', shared network' if a.shared else ''}, {a.epochs} epochs of training evaluations, CPU threads {res['threads']})", '',
                    '| method | ' + ' | '.join(cols) + ' |', '|---|' + '---:|' * len(cols), *[f"| {r['method']} | " + ' | '.join(f(r[c]) for c in cols) + ' |' for r in rows], '',
                    'Ratios are to the single-scale model in this run. Lower FID / KID / W1 / contrast error is better.'])
    (out/'multiscale.md').write_text(md + '\n'); (out/'multiscale.json').write_text(json.dumps(res, indent=1))
    print(md); print(f"table: {out/'multiscale.md'}\ndata: {out/'multiscale.json'}")

if __name__ == '__main__': main()
