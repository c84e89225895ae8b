"""Mask -> image (bravo) on brain phantoms with each backbone at equal training compute, in one run.

Backbones: `unet` (the mask concatenated to the input), `spade` (the mask normalises every UNet level) and `dit` (a
diffusion transformer on 2-pixel patches, the mask as extra patch channels), each trained by `medsynth.training.train`
for the same epochs and batch size (the same number of training network evaluations) from the same data and seed; and
`controlnet`: a ControlNet trained for those epochs on top of an unconditional UNet trained for them first (the base's
epochs are extra compute, reported as such). Each run samples one image per held-out mask (the EMA weights, the
configured sampler). Reported per backbone: parameters, training wall time, mask adherence (Dice of a segmenter trained
on the real training images, applied to the generated images against the masks they were generated from; the same
segmenter on the real held-out images is the ceiling) and the phantom's ground truth (mean absolute error of each
generated image to the real image of its mask, intensities in [-1, 1]). Writes backbones.md and backbones.json.

    python benchmarks/backbones.py [--out runs/benchmarks] [--size 32] [--subjects 8] [--epochs 20] [--n 64]
"""
from __future__ import annotations
import argparse, json, tempfile, time
from pathlib import Path
import torch
from torch.utils.data import default_collate
from medsynth.data.phantoms import BrainPhantom, write_subjects
from medsynth.training.config import make_config
from medsynth.training.data import build_datasets, mode_of
from medsynth.training.learner import train
from medsynth.training.runs import load_network
from medsynth.training.generation import generate
from medsynth.evaluation.utility import fit_downstream, evaluate_downstream

BACKBONES = ('unet', 'spade', 'dit', 'controlnet')

def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='runs/benchmarks')
    p.add_argument('--size', type=int, default=32, help='slice size (pixels)')
    p.add_argument('--subjects', type=int, default=8)
    p.add_argument('--epochs', type=int, default=20)
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--n', type=int, default=64, help='held-out masks to generate from')
    p.add_argument('--steps', type=int, default=20, help='sampling steps')
    p.add_argument('--seg-steps', type=int, default=300, help='segmenter training steps')
    p.add_argument('--backbones', nargs='+', default=list(BACKBONES), choices=BACKBONES)
    a = p.parse_args(argv)
    for k in ('size', 'subjects', 'epochs', 'batch', 'n', 'steps', 'seg_steps'):
        if getattr(a, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1")
    if a.size % 4:
        p.error('--size must be a multiple of 4 (the UNet halves the image twice)')
    return a

def _config(a, data:Path, backbone:str, **kw):
    return make_config(dict(dict(data=str(data), mode='bravo', size=[a.size, a.size], foreground_only=True,
                            channels=[32, 64, 64], attention_levels=[False, False, True], batch_size=a.batch,
                            epochs=a.epochs, lr=1e-3, ema_after=0, sample_steps=a.steps, backbone=backbone,
                            dit_width=192, dit_depth=6, dit_heads=4, patch_size=2), **kw))

def _stack(ds, n=None):
    "`(images, masks in {0, 1}, masks in {-1, 1})` of the first `n` items of `ds`."
    cfg_mode = mode_of(make_config(dict(data='x', mode='bravo')))
    x0, cond, _ = cfg_mode.split(default_collate([ds[i] for i in range(len(ds) if n is None else min(n, len(ds)))]))
    return x0, (cond > 0).long(), cond

def _train(a, data:Path, runs:Path, name:str) -> tuple:
    "`(config, run folder, seconds, extra seconds)` of backbone `name` (extra: a ControlNet's base run)."
    extra = 0.
    if name == 'controlnet':
        t0 = time.perf_counter()
        train(_config(a, data, 'unet', mode='uncond'), runs/'uncond', progress=False)
        extra = time.perf_counter() - t0
    cfg = _config(a, data, 'unet', controlnet=str(runs/'uncond')) if name == 'controlnet' else _config(a, data, name)
    t0 = time.perf_counter()
    train(cfg, runs/name, progress=False)
    return cfg, runs/name, time.perf_counter() - t0, extra

@torch.no_grad()
def _sample(cfg, run:Path, cond:torch.Tensor) -> torch.Tensor:
    "One image per mask in `cond` from the run's EMA weights, seeded, and the network's trainable parameters."
    _, net, _, _ = load_network(run, 'ema')
    g = torch.Generator().manual_seed(0)
    out = [generate(net, cfg, (len(c), 1, *c.shape[2:]), cond=c, generator=g).cpu() for c in cond.split(32)]
    return torch.cat(out).clamp(-1, 1), sum(p.numel() for p in net.parameters() if p.requires_grad)

def run(a) -> dict:
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    tmp = Path(tempfile.mkdtemp())
    write_subjects(tmp/'sub', BrainPhantom((a.size, a.size, 16), prevalence=1., seed=0), a.subjects,
                   modalities=('t1', 't1ce', 'seg'))
    tr, va, _ = build_datasets(_config(a, tmp/'sub', 'unet'))
    (xr, mr, _), (xv, mv, cv) = _stack(tr), _stack(va, a.n)
    seg = fit_downstream('segment', xr.to(dev), mr.to(dev), 2, seed=0, steps=a.seg_steps)
    rows = [dict(backbone='real (ceiling)', params=0, train_s=0., base_s=0., mae=0.,
                 **evaluate_downstream('segment', seg, xv.to(dev), mv.to(dev)))]
    for name in a.backbones:
        cfg, folder, secs, extra = _train(a, tmp/'sub', tmp/'runs', name)
        gen, params = _sample(cfg, folder, cv)
        dice = evaluate_downstream('segment', seg, gen.to(dev), mv.to(dev))
        rows.append(dict(backbone=name, params=params, train_s=secs, base_s=extra, mae=(gen - xv).abs().mean().item(),
                         **dice))
    return dict(device=torch.cuda.get_device_name() if dev == 'cuda' else 'cpu', args=vars(a), rows=rows,
                train_images=len(tr), heldout=len(xv))

def table(res:dict) -> str:
    a = res['args']
    head = [f"# Backbones for mask -> image (bravo), phantoms {a['size']}px, {a['epochs']} epochs x batch {a['batch']} "
            f"each, on {res['device']}", '',
            f"{res['train_images']} training slices, {res['heldout']} held-out masks, {a['steps']} sampling steps. "
            "Dice: a segmenter trained on the real training slices, applied to the generated images against their "
            "masks. MAE: to the phantom's real image of the same mask. Trainable parameters only (the ControlNet's "
            "base is frozen; its own training time is base s).", '',
            '| backbone | trainable params | train s | base s | Dice | IoU | MAE |', '|---|---|---|---|---|---|---|']
    return '\n'.join(head + [f"| {r['backbone']} | {r['params']:,} | {r['train_s']:.1f} | {r['base_s']:.1f} | "
                             f"{r['dice']:.3f} | {r['iou']:.3f} | {r['mae']:.3f} |" for r in res['rows']]) + '\n'

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
