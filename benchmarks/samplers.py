"""Sampler accuracy against the number of denoiser evaluations (NFE), medsynth and diffusers, on the exact oracle.

Every sampler starts from the same noise and calls the same exact Gaussian-mixture denoiser. Two errors:
`chi2`, the mean squared z-score of the samples' per-component weights, means and variances (about 1 for exact
samples; it measures distance to the target distribution and applies to stochastic samplers too), and `ode`, the
mean distance of each sample to the exact probability-flow ODE solution from the same noise (1000 DPM-Solver++
steps; deterministic samplers only). Writes a markdown table, a JSON file and a plot.

    python benchmarks/samplers.py [--out runs/benchmarks] [--n 10000] [--nfe 5 10 12 20 50 100 1000]
    python benchmarks/samplers.py --write-steps      # recompute medsynth/diffusion/ays_steps.json (spacing='ays')
"""
from __future__ import annotations
import argparse, inspect, json, math, time
from pathlib import Path
import numpy as np
import torch
from medsynth.diffusion.schedules import get_schedule
from medsynth.core.testing import mixture_zscores
from medsynth.diffusion.steps import AYS_FILE, ays_oracle, write_steps
from medsynth.diffusion.samplers import sample

NFES = (5, 10, 12, 20, 50, 100, 1000)

class Counter:
    "Wrap a denoiser and count its calls."
    def __init__(self, f): self.f, self.n = f, 0
    def __call__(self, *a, **k): self.n += 1; return self.f(*a, **k)

# medsynth configurations: (label, sampler, options, NFE per step; heun's last step is one evaluation)
MEDSYNTH = [('ddpm', 'ddpm', {}, 1), ('ddpm (large var.)', 'ddpm', {'variance': 'large'}, 1), ('ddim', 'ddim', {}, 1),
            ('ddim eta=1', 'ddim', {'eta': 1.}, 1), ('euler', 'euler', {}, 1), ('heun', 'heun', {}, 2), ('dpm++(2m)', 'dpmpp_2m', {}, 1),
            ('dpm++(2m) logsnr', 'dpmpp_2m', {'spacing': 'logsnr'}, 1), ('dpm++(3m)', 'dpmpp_3m', {}, 1),
            ('dpm++(3m) logsnr', 'dpmpp_3m', {'spacing': 'logsnr'}, 1),
            ('dpm++(3m) no lower-order final', 'dpmpp_3m', {'lower_order_final': False}, 1),
            ('dpm++(3m) logsnr no lower-order final', 'dpmpp_3m', {'spacing': 'logsnr', 'lower_order_final': False}, 1),
            ('heun logsnr', 'heun', {'spacing': 'logsnr'}, 2), ('ddim logsnr', 'ddim', {'spacing': 'logsnr'}, 1),
            ('ddim karras', 'ddim', {'spacing': 'karras'}, 1), ('heun karras', 'heun', {'spacing': 'karras'}, 2),
            ('heun eps', 'heun', {'form': 'eps'}, 2), ('heun eps logsnr', 'heun', {'form': 'eps', 'spacing': 'logsnr'}, 2),
            ('heun eps karras', 'heun', {'form': 'eps', 'spacing': 'karras'}, 2), ('heun ays', 'heun', {'spacing': 'ays'}, 2),
            ('dpm++(2m) karras', 'dpmpp_2m', {'spacing': 'karras'}, 1), ('dpm++(3m) karras', 'dpmpp_3m', {'spacing': 'karras'}, 1),
            ('unipc bh2', 'unipc', {}, 1), ('unipc bh1', 'unipc', {'variant': 'bh1'}, 1), ('unipc bh2 order 3', 'unipc', {'order': 3}, 1),
            ('unipc bh2 logsnr', 'unipc', {'spacing': 'logsnr'}, 1), ('unipc bh2 karras', 'unipc', {'spacing': 'karras'}, 1),
            ('ddim ays', 'ddim', {'spacing': 'ays'}, 1), ('dpm++(2m) ays', 'dpmpp_2m', {'spacing': 'ays'}, 1),
            ('unipc bh2 ays', 'unipc', {'spacing': 'ays'}, 1), ('unipc bh2 order 3 ays', 'unipc', {'spacing': 'ays', 'order': 3}, 1)]

def run_medsynth(gm, sch, noise, nfe, sampler, opts, per_step):
    steps = max(1, (nfe + 1) // 2) if per_step == 2 else nfe
    opts = dict(opts); spacing = opts.pop('spacing', 'uniform')
    den = Counter(gm.denoiser(sch))
    x = sample(den, sch, noise, steps=min(steps, sch.T), sampler=sampler, spacing=spacing, generator=torch.Generator().manual_seed(1), **opts)
    return x, den.n

def diffusers_schedulers():
    import diffusers as d
    common = dict(num_train_timesteps=1000, beta_schedule='linear', beta_start=1e-4, beta_end=0.02)
    return [('DDPMScheduler', lambda: d.DDPMScheduler(**common, clip_sample=False, timestep_spacing='trailing'), 1, True),
            ('DDIMScheduler', lambda: d.DDIMScheduler(**common, clip_sample=False, timestep_spacing='trailing'), 1, False),
            ('EulerDiscreteScheduler', lambda: d.EulerDiscreteScheduler(**common, timestep_spacing='trailing'), 1, False),
            ('HeunDiscreteScheduler', lambda: d.HeunDiscreteScheduler(**common, timestep_spacing='trailing'), 2, False),
            ('DPMSolverMultistepScheduler', lambda: d.DPMSolverMultistepScheduler(**common, algorithm_type='dpmsolver++', solver_order=2), 1, False),
            ('DPMSolverMultistep order 3', lambda: d.DPMSolverMultistepScheduler(**common, algorithm_type='dpmsolver++', solver_order=3), 1, False),
            ('DPMSolverMultistep 2M lu_lambdas', lambda: d.DPMSolverMultistepScheduler(**common, algorithm_type='dpmsolver++', solver_order=2, use_lu_lambdas=True), 1, False),
            ('DPMSolverMultistep 3M lu_lambdas', lambda: d.DPMSolverMultistepScheduler(**common, algorithm_type='dpmsolver++', solver_order=3, use_lu_lambdas=True), 1, False),
            ('DPMSolverMultistep 2M karras', lambda: d.DPMSolverMultistepScheduler(**common, algorithm_type='dpmsolver++', solver_order=2, use_karras_sigmas=True), 1, False),
            ('DPMSolverMultistep 3M karras', lambda: d.DPMSolverMultistepScheduler(**common, algorithm_type='dpmsolver++', solver_order=3, use_karras_sigmas=True), 1, False),
            ('DPMSolverMultistep 3M no lower_order_final', lambda: d.DPMSolverMultistepScheduler(**common, algorithm_type='dpmsolver++', solver_order=3, lower_order_final=False), 1, False),
            ('UniPCMultistepScheduler', lambda: d.UniPCMultistepScheduler(**common), 1, False),
            ('UniPCMultistep bh1', lambda: d.UniPCMultistepScheduler(**common, solver_type='bh1'), 1, False),
            ('UniPCMultistep order 3', lambda: d.UniPCMultistepScheduler(**common, solver_order=3), 1, False),
            ('UniPCMultistep karras', lambda: d.UniPCMultistepScheduler(**common, use_karras_sigmas=True), 1, False),
            ('DEISMultistepScheduler', lambda: d.DEISMultistepScheduler(**common), 1, False)]

def run_diffusers(gm, sch, noise, nfe, make, per_step):
    ref = make()
    steps = max(1, (nfe + 1) // 2) if per_step == 2 else nfe
    ref.set_timesteps(min(steps, 1000))
    sig = ((1 - sch.alphas_cumprod) / sch.alphas_cumprod).sqrt().numpy()
    calls, g = 0, torch.Generator().manual_seed(1)
    def eps_of(x, t):
        nonlocal calls; calls += 1
        s = float(np.interp(float(t), np.arange(len(sig)), sig))          # diffusers' own interpolation for fractional t
        a = 1 / math.sqrt(1 + s * s)
        return gm.denoise(x, a, s * a)[1]
    kw = {'generator': g} if 'generator' in inspect.signature(ref.step).parameters else {}
    x = noise * ref.init_noise_sigma
    for t in ref.timesteps:
        x = ref.step(eps_of(ref.scale_model_input(x, t), t), t, x, **kw).prev_sample
    return x, calls

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='runs/benchmarks'); p.add_argument('--n', type=int, default=10000)
    p.add_argument('--nfe', type=int, nargs='+', default=list(NFES), help='NFE budgets to measure (5, 10 and 12 are needed for the goal lines)')
    p.add_argument('--write-steps', action='store_true', help="recompute the stored 'ays' steps (medsynth/diffusion/ays_steps.json) and exit")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    if a.write_steps:
        write_steps(); print(f"wrote {AYS_FILE}"); return
    nfes, n = tuple(a.nfe), a.n
    if any(k < 1 for k in nfes) or n < 100: p.error(f"--nfe values must be >= 1 and --n >= 100 (got {list(nfes)}, {n})")
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    gm, sch = ays_oracle(), get_schedule('linear')   # six sharp, unequally weighted modes on a ring
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    t0 = time.time()
    ode = sample(gm.denoiser(sch), sch, noise, steps=1000, sampler='dpmpp_2m')
    exact = [mixture_zscores(gm, gm.sample(n, generator=torch.Generator().manual_seed(s))[0])['chi2'] for s in range(5)]
    rows = []
    cfgs = [('medsynth', l, (lambda nfe, s=s, o=o, k=k: run_medsynth(gm, sch, noise, nfe, s, o, k)), s in ('ddpm',) or o.get('eta', 0) > 0) for l, s, o, k in MEDSYNTH]
    cfgs += [('diffusers', l, (lambda nfe, m=m, k=k: run_diffusers(gm, sch, noise, nfe, m, k)), stoch) for l, m, k, stoch in diffusers_schedulers()]
    for lib, label, run, stochastic in cfgs:
        for nfe in nfes:
            try:
                x, calls = run(nfe)
            except Exception as e:              # a reference scheduler that cannot run this budget: recorded, not fatal
                print(f"{lib:9s} {label:28s} NFE {nfe:5d}  failed: {type(e).__name__}: {e}", flush=True)
                rows.append(dict(library=lib, sampler=label, nfe_target=nfe, nfe=0, chi2=math.nan, ode=None, error=str(e)))
                continue
            is_ref = lib == 'medsynth' and label == 'dpm++(2m)' and nfe == 1000       # the ODE reference itself
            rows.append(dict(library=lib, sampler=label, nfe_target=nfe, nfe=calls, chi2=mixture_zscores(gm, x)['chi2'],
                             ode=None if stochastic or is_ref else (x - ode).norm(dim=1).mean().item()))
            print(f"{lib:9s} {label:28s} NFE {calls:5d}  chi2 {rows[-1]['chi2']:9.2f}  ode {rows[-1]['ode'] if rows[-1]['ode'] is not None else float('nan'):.4f}", flush=True)
    (out / 'samplers.json').write_text(json.dumps(dict(rows=rows, exact_chi2=exact, n=n, schedule='linear', seconds=time.time() - t0), indent=1))
    md = write_markdown(rows, exact, nfes, n, out / 'samplers.md')
    plot(rows, exact, out / 'samplers.png')
    print(md)
    print(f"\ntable: {out / 'samplers.md'}\nplot:  {out / 'samplers.png'}\ndata:  {out / 'samplers.json'}")

def best_at(rows, lib, nfe, key):
    c = [r for r in rows if r['library'] == lib and r['nfe_target'] == nfe and r[key] is not None and not math.isnan(r[key])]
    return min(c, key=lambda r: r[key]) if c else None

def write_markdown(rows, exact, nfes, n, path):
    L = [f"# Sampler error against NFE on the exact ring oracle (linear schedule, {n} samples, uniform/trailing steps)\n",
         f"`chi2`: mean squared z-score of component weights, means and variances (exact samples: {min(exact):.2f} to {max(exact):.2f}). "
         "`ode`: mean distance to the exact ODE solution from the same noise (deterministic samplers; the reference is medsynth dpm++(2m) at 1000 NFE). NFE: denoiser evaluations actually made.\n",
         "| library | sampler | " + " | ".join(f"chi2 @{k}" for k in nfes) + " | " + " | ".join(f"ode @{k}" for k in nfes) + " |",
         "|---|---|" + "---|" * (2 * len(nfes))]
    for lib, label in dict.fromkeys((r['library'], r['sampler']) for r in rows):
        rs = {r['nfe_target']: r for r in rows if (r['library'], r['sampler']) == (lib, label)}
        chi = " | ".join("failed" if 'error' in rs[k] else f"{rs[k]['chi2']:.2f}" + (f" ({rs[k]['nfe']})" if rs[k]['nfe'] != k else "") for k in nfes)
        od = " | ".join("-" if rs[k]['ode'] is None else f"{rs[k]['ode']:.4f}" for k in nfes)
        L.append(f"| {lib} | {label} | {chi} | {od} |")
    L.append("\n## Goal: at 10 NFE, medsynth's best has at most half the error of diffusers' best\n")
    for key in ('chi2', 'ode'):
        m, d = best_at(rows, 'medsynth', 10, key), best_at(rows, 'diffusers', 10, key)
        if m is None or d is None: L.append(f"- {key}: not measured at 10 NFE"); continue
        ok = m[key] <= 0.5 * d[key]
        L.append(f"- {key}: medsynth {m['sampler']} {m[key]:.4f} vs diffusers {d['sampler']} {d[key]:.4f}; ratio {m[key] / d[key]:.2f} (goal <= 0.50) -> {'met' if ok else 'NOT met'}")
    L.append("\n## Goal: at 12 NFE, medsynth's best is indistinguishable from exact samples\n")
    m = best_at(rows, 'medsynth', 12, 'chi2')
    if m is None: L.append("- chi2: not measured at 12 NFE")
    else:
        ok = m['chi2'] <= max(exact)
        L.append(f"- chi2: medsynth {m['sampler']} {m['chi2']:.2f} vs exact samples {min(exact):.2f} to {max(exact):.2f}; ratio to the exact maximum {m['chi2'] / max(exact):.2f} (goal <= 1.00) -> {'met' if ok else 'NOT met'}")
    L.append("\n## Goal: at 5 NFE, no medsynth configuration is worse than diffusers' DDIM\n")
    ref = [r for r in rows if r['library'] == 'diffusers' and r['sampler'] == 'DDIMScheduler' and r['nfe_target'] == 5]
    ours = [r for r in rows if r['library'] == 'medsynth' and r['nfe_target'] == 5]
    if not ref or not ours: L.append("- not measured at 5 NFE")
    for key in ('chi2', 'ode') if ref and ours else ():
        c = [r for r in ours if r[key] is not None and not math.isnan(r[key])]
        w = max(c, key=lambda r: r[key])
        bad = [f"{r['sampler']} {r[key]:.4f}" for r in c if r[key] > ref[0][key] * (1 + 1e-5)]   # equal within float32: not worse
        L.append(f"- {key}: worst medsynth {w['sampler']} {w[key]:.4f} vs diffusers DDIM {ref[0][key]:.4f}; ratio {w[key] / ref[0][key]:.2f} (goal <= 1.00) -> "
                 + ('met' if not bad else f"NOT met ({len(bad)} of {len(c)} worse: {'; '.join(bad)})"))
    txt = "\n".join(L) + "\n"
    path.write_text(txt)
    return txt

def plot(rows, exact, path):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axs = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.cm.tab20.colors
    for i, (lib, label) in enumerate(dict.fromkeys((r['library'], r['sampler']) for r in rows)):
        rs = [r for r in rows if (r['library'], r['sampler']) == (lib, label) and 'error' not in r]
        st = dict(ls='-' if lib == 'medsynth' else '--', marker='o' if lib == 'medsynth' else 'x', label=f"{lib}: {label}", color=colors[i % 20])
        axs[0].loglog([r['nfe'] for r in rs], [r['chi2'] for r in rs], **st)
        od = [r for r in rs if r['ode'] is not None]
        if od: axs[1].loglog([r['nfe'] for r in od], [r['ode'] for r in od], **st)
    axs[0].axhspan(min(exact), max(exact), color='grey', alpha=0.3, label='exact samples')
    axs[0].set(xlabel='NFE', ylabel='mixture chi2 (1 = exact)', title='distance to the target distribution')
    axs[1].set(xlabel='NFE', ylabel='mean distance to exact ODE solution', title='ODE error (deterministic samplers)')
    axs[0].legend(fontsize=6, ncol=2)
    fig.tight_layout(); fig.savefig(path, dpi=120); plt.close(fig)

if __name__ == '__main__': main()
