"""The docs site a reader gets, checked without Quarto (`make docs-check`, tools/docs_check.py): every notebook goes
through nbdev's docs processors, is rendered with the sidebar and opened in headless Chromium. Chromium is required, not
optional: `.ci/run` installs it; elsewhere `apt-get install -y chromium`."""
import json, subprocess, sys
from conftest import ROOT
sys.path.insert(0, str(ROOT/'tools'))
import docs_check as dc

def test_checker_sees_broken_pages(tmp_path):
    "The browser check reports a missing image and a script error; the static check a dead link, anchor and signature."
    browser = dc.chromium()
    bad = tmp_path/'bad.html'
    bad.write_text(f"<html><body><img src='missing.png'><script>undefined_fn()</script>{dc.CHECK_JS}</body></html>")
    errs = dc.browse(bad, browser)
    assert any('image did not load' in e for e in errs) and any('console' in e for e in errs), errs
    good = tmp_path/'good.html'
    good.write_text(f"<html><body><img src='data:image/png;base64,{dc.PIXEL}'>{dc.CHECK_JS}</body></html>")
    assert dc.browse(good, browser) == []
    assert dc.slug('DiffusionUNet.forward') == 'diffusionunet.forward' and dc.slug('Errors that name the fix') == 'errors-that-name-the-fix'
    site = tmp_path/'site'; site.mkdir(); (site/'a.html').write_text('<h3 id="f">f</h3><pre>def f(x)</pre>')
    (site/'b.html').write_text('<a href="a.html#f">ok</a> <a href="a.html#g">no anchor</a> <a href="c.html">no page</a>'
                               '<a href="https://x.io/docs/a.html#f">site link</a> <a href="https://elsewhere.org/">out</a>')
    errs = dc.link_errors('b.html', site, 'https://x.io/docs/')
    assert len(errs) == 2 and '#g' in errs[0] and 'c.html' in errs[1], errs
    assert dc.signature_errors('<h3 id="f">f</h3><pre>def f(x)</pre><h3 id="g">g</h3><p>no code</p>', 'm', ['f', 'g']) == \
        ['no rendered signature for m.g']

def test_docs_site_in_chromium():
    dc.chromium()                                                  # fails with the install command where it is missing
    out = ROOT/'runs'/'docs_check'
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'docs_check.py'), '--out', str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    res = json.loads((out/'report.json').read_text())
    assert res['pages'] == res['notebooks'] > 50 and res['errors'] == [], res
    assert (out/'index.png').stat().st_size > 10_000, 'the screenshot of the index page is empty'
