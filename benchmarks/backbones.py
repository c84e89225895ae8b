"""Mask -> image (bravo) on brain phantoms with each backbone at equal training compute, in one run.

Backbones: `unet` (the mask concatenated to the input), `spade` (the mask normalises every UNet level), `dit` (a
diffusion transformer on 2-pixel patches, the mask as extra patch channels) and `controlnet` (a ControlNet on top of an
unconditional UNet trained first; the base's epochs are extra compute, reported as such), each trained for the same
epochs and batch size from the same data and seed by `medsynth.evaluation.backbones.compare_backbones`, which also
says how each is judged: mask adherence (Dice of a segmenter trained on the real training slices), FID on a domain
encoder trained on them, and the phantom's ground truth (MAE to the real image of the same mask). The phantom lesions
are scaled by --lesion-scale: at 32 px the default lesions cover about 0.1 % of a slice and no segmenter learns them
on a CPU budget. Writes backbones.md and backbones.json.

    python benchmarks/backbones.py [--out runs/benchmarks] [--size 32] [--subjects 24] [--epochs 40] [--n 64]
"""
from __future__ import annotations
import argparse, json, tempfile
from pathlib import Path
from medsynth.data.phantoms import BrainPhantom, write_subjects
from medsynth.evaluation.backbones import BACKBONES, compare_backbones, backbone_table

def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='runs/benchmarks')
    p.add_argument('--size', type=int, default=32, help='slice size (pixels)')
    p.add_argument('--subjects', type=int, default=24)
    p.add_argument('--epochs', type=int, default=40)
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--n', type=int, default=64, help='held-out masks to generate from')
    p.add_argument('--steps', type=int, default=20, help='sampling steps')
    p.add_argument('--seg-steps', type=int, default=600, help='segmenter training steps')
    p.add_argument('--encoder-steps', type=int, default=300, help='domain encoder training steps (FID features)')
    p.add_argument('--lesion-scale', type=float, default=2.5, help='phantom lesion radii x this')
    p.add_argument('--backbones', nargs='+', default=list(BACKBONES), choices=BACKBONES)
    a = p.parse_args(argv)
    for k in ('size', 'subjects', 'epochs', 'batch', 'n', 'steps', 'seg_steps', 'encoder_steps'):
        if getattr(a, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1")
    if a.size % 4:
        p.error('--size must be a multiple of 4 (the UNet halves the image twice)')
    if not a.lesion_scale > 0:
        p.error('--lesion-scale must be > 0')
    return a

def config(a, data:Path) -> dict:
    "The bravo configuration of every backbone; a quarter of the subjects held out for the judges."
    return dict(data=str(data), mode='bravo', size=[a.size, a.size], foreground_only=True, valid_frac=0.25,
                channels=[32, 64, 64],
                attention_levels=[False, False, True], batch_size=a.batch, epochs=a.epochs, lr=1e-3, ema_after=0,
                sample_steps=a.steps, dit_width=192, dit_depth=6, dit_heads=4, patch_size=2)

def run(a) -> dict:
    tmp = Path(tempfile.mkdtemp())
    write_subjects(tmp/'sub', BrainPhantom((a.size, a.size, 16), prevalence=1., seed=0, lesion_scale=a.lesion_scale),
                   a.subjects, modalities=('t1', 't1ce', 'seg'))
    res = compare_backbones(config(a, tmp/'sub'), tmp/'runs', backbones=a.backbones, n=a.n, seg_steps=a.seg_steps,
                            encoder_steps=a.encoder_steps)
    return dict(res, args=vars(a))

def table(res:dict) -> str:
    a = res['args']
    return (f"# Backbones for mask -> image (bravo), phantoms {a['size']}px, lesions x{a['lesion_scale']:g}\n\n"
            + backbone_table(res))

def main(argv=None):
    a = _args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = run(a)
    (out/'backbones.json').write_text(json.dumps(res, indent=1))
    (out/'backbones.md').write_text(table(res))
    print(table(res))
    print(f"table: {out/'backbones.md'}")

if __name__ == '__main__':
    main()
