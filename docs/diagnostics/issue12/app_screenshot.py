"""Opens the web demo (launch/app.py) in a real headless Chromium, segments an image and screenshots the page.

  pip install playwright        # the Python driver only; the browser is Debian's chromium (/usr/bin/chromium)
  python docs/diagnostics/issue12/app_screenshot.py --image=scene.png --out=app.png -- \
      --config=configs/smoke.py --checkpoint=/tmp/ovsnet_smoke --classes=...

Everything after `--` goes to launch/app.py. The script starts the app on a free port, waits for it
to serve, uploads `--image` through the page's file input, clicks "Segment", waits for the overlay and
the class table, saves a full-page screenshot and prints the table's rows; exit 1 if any step fails.
"""
import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise SystemExit(f'launch/app.py exited with {proc.returncode} before serving {url}')
    try:
      urllib.request.urlopen(url, timeout=5)
      return
    except OSError:
      time.sleep(2)
  raise SystemExit(f'{url} did not answer within {timeout:.0f} s')


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--image', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--browser', default='/usr/bin/chromium')
  parser.add_argument('--timeout', type=float, default=900, help='seconds for the app to start and to segment')
  args, app_args = parser.parse_known_args()
  app_args = [a for a in app_args if a != '--']
  from playwright.sync_api import sync_playwright  # pylint: disable=g-import-not-at-top

  port = free_port()
  url = f'http://127.0.0.1:{port}'
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'launch', 'app.py'), f'--port={port}', *app_args],
                          cwd=ROOT)
  try:
    t0 = time.time()
    wait_http(url, proc, args.timeout)
    print(f'app serving after {time.time() - t0:.0f} s', flush=True)
    with sync_playwright() as p:
      browser = p.chromium.launch(executable_path=args.browser, headless=True)
      page = browser.new_page(viewport={'width': 1400, 'height': 1000})
      page.goto(url)
      page.locator('input[type=file]').first.set_input_files(os.path.abspath(args.image))
      page.get_by_role('button', name='Segment').click()
      t1 = time.time()
      # Done when a second image (the overlay, after the uploaded one) is served as a file.
      page.wait_for_function(
          "() => [...document.querySelectorAll('img')].filter(i => (i.src || '').includes('/file=')).length >= 2",
          timeout=args.timeout * 1000)
      page.wait_for_timeout(1500)  # let the image and the table finish painting
      print(f'segmented in {time.time() - t1:.1f} s (first call includes compilation)', flush=True)
      # The class table's text as the page shows it (gradio's dataframe draws its cells in nested elements).
      rows = page.evaluate("() => [...document.querySelectorAll('tr')].map(r => [...r.children].map("
                           "c => c.textContent.trim()).join('\\t')).filter(t => t.replace(/\\t/g, '').length)")
      page.screenshot(path=args.out, full_page=True)
      browser.close()
    print(f'screenshot: {args.out}')
    for row in rows:
      print('  ' + ' | '.join(c.strip() for c in row.split('\t')))
  finally:
    proc.terminate()
    proc.wait(timeout=60)


if __name__ == '__main__':
  main()
