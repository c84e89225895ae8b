"""`make docs-check`: the docs site checked without Quarto. Every notebook in nbs/ goes through nbdev's own docs
processors (those `nbdev-proc-nbs` runs, one notebook at a time so that every failure is named) into _proc/, is
rendered to an HTML page with the sidebar of nbs/sidebar.yml, and is opened in headless Chromium. A page passes when it
loads without console errors, every image in it loads, every exported function and class of its module has a rendered
signature, and every link into the site reaches a page and anchor that exist. A screenshot of the index page is
written to runs/docs_check/index.png. `python tools/docs_check.py [--out DIR]`; exit status 1 lists the problems."""
import argparse, ast, html, json, os, re, shutil, subprocess, sys, tempfile, warnings
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit, unquote
import markdown, yaml

ROOT = Path(__file__).resolve().parents[1]
NBS, PROC = ROOT/'nbs', ROOT/'_proc'
INSTALL = 'headless Chromium is needed: apt-get install -y chromium'
CHECK_JS = """<script>window.addEventListener('load', () => {
  const bad = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80));
  const p = document.createElement('pre'); p.id = 'docs-check'; p.style.display = 'none';
  p.textContent = JSON.stringify({images: document.images.length, broken: bad}); document.body.appendChild(p);
});</script>"""
PIXEL = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII='   # a 1x1 PNG
CSS = """body{font-family:sans-serif;margin:0;display:flex}nav{width:240px;padding:1em;background:#f6f6f6;min-height:100vh}
nav ul{list-style:none;padding-left:.8em}main{padding:1em 2em;max-width:900px;overflow-x:auto}
pre{background:#f3f3f3;padding:.5em;overflow-x:auto}pre.out{background:#fff;border-left:3px solid #ccc}img{max-width:100%}"""

def chromium() -> str:
    "The Chromium binary, or a ValueError that says how to install it."
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        if p := shutil.which(name): return p
    raise ValueError(INSTALL)

# -- processing: nbdev's processors, per notebook ------------------------------------------------------------------
def _proc_one(nb:str) -> str:
    "Process `nb` (relative to nbs/) into _proc/ with nbdev's docs processors; '' or the error."
    os.environ['IN_TEST'] = '1'; os.chdir(ROOT)
    from nbdev.processors import FilterDefaults
    from nbdev.serve_drv import exec_nb
    dst = PROC/nb; dst.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(): # nbdev warns of each cell mixing imports and code; one that fails is reported
        warnings.simplefilter('ignore')
        try: exec_nb(NBS/nb, dst, FilterDefaults)
        except Exception as e:
            first = str(e).splitlines()
            return f'{nb}: nbdev cannot process it ({first[0][:120]} ... {first[-1][:200]})'
    return ''

def process(nbs:list, workers:int=2, timeout:int=300) -> list:
    "Copy nbs/ to _proc/ and process each notebook there, each in a process of its own; the errors."
    if PROC.exists(): shutil.rmtree(PROC)
    shutil.copytree(NBS, PROC, ignore=shutil.ignore_patterns('*.ipynb', '.*'))
    def one(nb):
        try: r = subprocess.run([sys.executable, __file__, '--proc', nb], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired: return f'{nb}: nbdev did not process it in {timeout} s'
        return r.stdout.strip() or ('' if r.returncode == 0 else f'{nb}: processing crashed: {r.stderr[-300:]}')
    with ThreadPoolExecutor(workers) as ex: return [e for e in ex.map(one, nbs) if e]

# -- rendering -----------------------------------------------------------------------------------------------------
def slug(s:str) -> str:
    "The anchor Quarto gives a heading: lower case, spaces to dashes, punctuation other than `-_.` dropped."
    return re.sub(r'\s+', '-', re.sub(r'[^\w\s.-]', '', html.unescape(s).strip().lower()))

def _md(src:str) -> str:
    src = re.sub(r'\{target="_blank"[^}]*\}', '', src)        # Quarto's link attributes
    return markdown.markdown(src, extensions=['fenced_code', 'tables', 'toc'], extension_configs={'toc': {'slugify': lambda v, sep: slug(v)}})

def _output(o) -> str:
    if o['output_type'] == 'stream': return f"<pre class=out>{html.escape(''.join(o['text']))}</pre>"
    if o['output_type'] == 'error': return f"<pre class=out>{html.escape(o.get('ename', ''))}: {html.escape(o.get('evalue', ''))}</pre>"
    d = {k: ''.join(v) if isinstance(v, list) else v for k, v in o.get('data', {}).items()}
    if 'image/png' in d: return f"<img alt=figure src=\"data:image/png;base64,{d['image/png'].strip()}\">"
    if 'text/html' in d: return d['text/html']
    if 'text/markdown' in d: return _md(d['text/markdown'])
    return f"<pre class=out>{html.escape(d.get('text/plain', ''))}</pre>"

def page_of(nb:str) -> tuple:
    "(output path relative to the site root, frontmatter) of a processed notebook."
    cells = json.loads((PROC/nb).read_text())['cells']
    fm = next((yaml.safe_load(''.join(c['source']).strip().strip('-')) for c in cells if c['cell_type'] == 'raw'
               and ''.join(c['source']).startswith('---')), None) or {}
    name = fm.get('output-file') or Path(nb).with_suffix('.html').name
    return (Path(nb).parent/name).as_posix(), fm

def _nav(side:list, here:str, pages:dict) -> str:
    def item(e):
        if isinstance(e, dict): return f"<li><b>{html.escape(e['section'])}</b><ul>{''.join(map(item, e['contents']))}</ul></li>"
        href = os.path.relpath(pages[e][0], Path(here).parent.as_posix())
        return f"<li><a href=\"{href}\">{html.escape(str(pages[e][1].get('title', e)))}</a></li>"
    return f"<nav><ul>{''.join(map(item, side))}</ul></nav>"

def render(nb:str, pages:dict, side:list) -> str:
    out, fm = pages[nb]
    body = [f"<h1>{html.escape(str(fm.get('title', nb)))}</h1>", f"<p><em>{html.escape(str(fm.get('description', '')))}</em></p>"]
    for c in json.loads((PROC/nb).read_text())['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'markdown': body.append(_md(src))
        elif c['cell_type'] == 'code':
            shown = '\n'.join(l for l in src.splitlines() if not l.startswith('#|'))
            if shown.strip() and 'echo: false' not in src: body.append(f'<pre><code>{html.escape(shown)}</code></pre>')
            body += [_output(o) for o in c.get('outputs', [])]
    return (f"<!DOCTYPE html><html><head><meta charset=utf-8><title>{html.escape(str(fm.get('title', nb)))}</title>"
            f"<style>{CSS}</style></head><body>{_nav(side, out, pages)}<main>{''.join(body)}</main>{CHECK_JS}</body></html>")

# -- checks --------------------------------------------------------------------------------------------------------
class _Links(HTMLParser):
    "The links and the element ids of a page."
    def __init__(self):
        super().__init__(); self.hrefs, self.ids = [], set()
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if tag == 'a' and a.get('href'): self.hrefs.append(a['href'])

def exported_defs(module:str) -> list:
    "Functions and classes a module exports (its `__all__` that it defines), read from the source."
    f = ROOT/'medsynth'/(module.replace('.', '/') + '.py')
    tree = ast.parse(f.read_text())
    alls = next((ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and
                 any(getattr(t, 'id', '') == '__all__' for t in n.targets)), [])
    defs = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    return [a for a in alls if a in defs]

def _module(nb:str):
    for c in json.loads((NBS/nb).read_text())['cells']:
        if m := re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M): return m[1]

def signature_errors(text:str, mod:str, names:list) -> list:
    "Exported `names` of `mod` without a heading of their own followed by their `def`/`class` signature in page `text`."
    errs = []
    for name in names:
        secs = re.finditer(rf'<h[234] id="{re.escape(slug(name))}">.*?(?=<h[1234][ >]|$)', text, re.S)  # a section may share the id
        if not any(re.search(rf'(def|class)\s+{re.escape(name)}\b', html.unescape(sec[0])) for sec in secs):
            errs.append(f'no rendered signature for {mod}.{name}')
    return errs

def link_errors(out:str, site:Path, base:str) -> list:
    "Links of page `out` into the site (relative, or absolute under the docs URL `base`) that reach no page or anchor."
    p = _Links(); p.feed((site/out).read_text()); errs = []
    for h in p.hrefs:
        u = urlsplit(h)
        if u.scheme in ('mailto', 'data') or u.scheme in ('http', 'https') and not h.startswith(base): continue
        path = unquote(u.path[len(urlsplit(base).path):] if h.startswith(base) else u.path)
        target = (site/path if h.startswith(base) else (site/out).parent/path if path else site/out).resolve()
        if not target.is_file(): errs.append(f'link {h} reaches no page'); continue
        if u.fragment and target.suffix == '.html':
            t = _Links(); t.feed(target.read_text())
            if u.fragment not in t.ids: errs.append(f'link {h} reaches no anchor #{u.fragment}')
    return errs

def static_checks(nb:str, pages:dict, site:Path, base:str) -> list:
    "Signatures of the exported names and links into the site, from the written HTML."
    out = pages[nb][0]
    errs = signature_errors((site/out).read_text(), mod, exported_defs(mod)) if (mod := _module(nb)) else []
    return [f'{out}: {e}' for e in errs + link_errors(out, site, base)]

def browse(page:Path, browser:str) -> list:
    "Open `page` in headless Chromium: console errors and images that did not load."
    with tempfile.TemporaryDirectory(prefix='docs-check-') as prof:
        r = subprocess.run([browser, '--headless', '--no-sandbox', '--disable-gpu', '--allow-file-access-from-files',
                            f'--user-data-dir={prof}', '--enable-logging=stderr', '--v=0', '--virtual-time-budget=5000',
                            '--dump-dom', page.as_uri()], capture_output=True, text=True, timeout=90)
    name, errs = page.name, []
    errs += [f'{name}: console: {l.strip()[:200]}' for l in r.stderr.splitlines() if 'CONSOLE' in l and ('ERROR' in l or 'Uncaught' in l)]
    m = re.search(r'<pre id="docs-check"[^>]*>(.*?)</pre>', r.stdout, re.S)
    if not m: return errs + [f'{name}: the page did not finish loading in Chromium (rc {r.returncode}): {r.stderr[-300:]}']
    res = json.loads(html.unescape(m[1]))
    return errs + [f'{name}: image did not load: {b}' for b in res['broken']]

def screenshot(page:Path, png:Path, browser:str):
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='docs-check-') as prof:
        subprocess.run([browser, '--headless', '--no-sandbox', '--disable-gpu', f'--user-data-dir={prof}', '--hide-scrollbars',
                        '--window-size=1280,1400', f'--screenshot={png}', page.as_uri()], capture_output=True, timeout=90)

def main(argv=None) -> dict:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument('--out', default=str(ROOT/'runs'/'docs_check'), help='where the screenshot and report go')
    a.add_argument('--workers', type=int, default=2)
    a.add_argument('--proc', help='process this one notebook (relative to nbs/) and print its error, if any')
    a = a.parse_args(argv)
    if a.proc: print(_proc_one(a.proc)); return dict(errors=[])
    browser = chromium()
    side = yaml.safe_load((NBS/'sidebar.yml').read_text())['website']['sidebar']['contents']
    nbs = sorted(p.relative_to(NBS).as_posix() for p in NBS.rglob('*.ipynb') if not p.name.startswith(('_', '.'))
                 and '.ipynb_checkpoints' not in p.parts)
    errs = process(nbs, a.workers)
    done = [nb for nb in nbs if (PROC/nb).exists()]
    pages = {nb: page_of(nb) for nb in done}
    for nb in set(nbs) - set(done): pages[nb] = (Path(nb).with_suffix('.html').as_posix(), {'title': nb})
    site = PROC
    for nb in done: (site/pages[nb][0]).write_text(render(nb, pages, side))
    sys.path.insert(0, str(ROOT))
    from nbdev.config import get_config
    cfg = get_config(ROOT); base = f"{cfg.doc_host.rstrip('/')}{cfg.doc_baseurl.rstrip('/')}/"
    for nb in done: errs += static_checks(nb, pages, site, base)
    with ThreadPoolExecutor(a.workers) as ex: errs += sum(ex.map(lambda nb: browse(site/pages[nb][0], browser), done), [])
    out = Path(a.out); screenshot(site/pages['index.ipynb'][0], out/'index.png', browser)
    res = dict(pages=len(done), notebooks=len(nbs), errors=errs, screenshot=str(out/'index.png'))
    (out/'report.json').write_text(json.dumps(res, indent=1))
    print(f"docs check: {len(done)} of {len(nbs)} pages rendered and opened in Chromium, {len(errs)} problems; "
          f"screenshot {out/'index.png'}")
    for e in errs: print('  ' + e)
    return res

if __name__ == '__main__': sys.exit(1 if main()['errors'] else 0)
