"""Runs the OpenBench construction over large inputs: resumable scan, then resumable writing.

Progress lives in ``ROOT/openbench_build/``:
  ``scan_config.json`` + ``scan.jsonl``  one line per scanned image (its present source classes);
  ``write_config.json`` + ``written.jsonl``  one line per image written to ``ROOT/openbench``.
A re-run with the same sources skips scanned images; with the same settings (thresholds,
prompting, curation, encoder, resulting vocabulary) it skips written ones. A re-run with other
settings is refused, naming what to delete. A half-written last line (an interrupted run) is
dropped and redone. Images are processed in source order; the output is deterministic.
"""
import json
import os
import shutil
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image, ImageOps
import tqdm

from ovsnet_jax import atomic_io
from ovsnet_jax.input.datasets import decode
from ovsnet_jax.openbench import build, similarity, sources


def read_jsonl(path: str) -> List[dict]:
  """The records of a progress file; a truncated last line is dropped, other bad lines raise."""
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    lines = f.read().split('\n')
  records = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if n == len(lines):  # no newline after it: an interrupted write
        break
      raise ValueError(f'{path}: line {n} is not JSON ({e}); delete the file to redo this step') from e
  with atomic_io.open_atomic(path, 'w', encoding='utf-8') as f:  # rewrite without a truncated tail
    f.writelines(json.dumps(r, sort_keys=True) + '\n' for r in records)
  return records


def check_config(path: str, config: dict, what: str, delete: str) -> None:
  """Writes ``config`` at ``path`` the first time; later runs must match it."""
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      old = json.load(f)
    if old != json.loads(json.dumps(config)):
      changed = sorted(k for k in set(old) | set(config) if old.get(k) != json.loads(json.dumps(config)).get(k))
      raise ValueError(f'{path}: this output was {what} with other settings (changed: {changed}); '
                       f'delete {delete} or choose another output root')
  else:
    build.atomic_write(path, json.dumps(config, indent=1, sort_keys=True))


def scan(srcs: Sequence[sources.Source], work: str, progress: bool = True) -> Dict[str, dict]:
  """{stem: {'stem', 'source', 'index', 'present'}} for every image, resuming ``scan.jsonl``."""
  check_config(os.path.join(work, 'scan_config.json'),
               {s.name: {'images': len(s), 'first': s[0].stem if len(s) else ''} for s in srcs},
               'scanned', os.path.join(work, 'scan*'))
  path = os.path.join(work, 'scan.jsonl')
  done = {r['stem']: r for r in read_jsonl(path)}
  total = sum(len(s) for s in srcs)
  with open(path, 'a', encoding='utf-8') as f, tqdm.tqdm(total=total, desc='scan', disable=not progress) as bar:
    for src in srcs:
      for i in range(len(src)):
        stem = src[i].stem
        if stem not in done:
          label = src.read_label(i)  # (H, W)
          present = sorted(int(v) for v in np.unique(label) if v >= 0)
          done[stem] = {'stem': stem, 'source': src.name, 'index': i, 'present': present}
          f.write(json.dumps(done[stem], sort_keys=True) + '\n')
          f.flush()
        bar.update(1)
  return done


def copy_image(src_path: str, dst_path: str, label_hw: tuple, label_path: str) -> None:
  """JPEGs without EXIF rotation are copied byte for byte; others re-encoded (JPEG q95, 4:4:4)."""
  with Image.open(src_path) as im:
    rotated = im.getexif().get(0x0112, 1) != 1
    size = ImageOps.exif_transpose(im).size if rotated else im.size
    fmt = im.format
  if (size[1], size[0]) != tuple(label_hw):
    raise ValueError(f'{src_path}: image is {size[1]}x{size[0]} but its label {label_path} is '
                     f'{label_hw[0]}x{label_hw[1]}')
  with atomic_io.path_atomic(dst_path) as tmp:
    if fmt == 'JPEG' and not rotated:
      shutil.copyfile(src_path, tmp)
    else:
      Image.fromarray(decode.read_image(src_path)).save(tmp, format='JPEG', quality=95, subsampling=0)


def build_openbench(srcs: Sequence[sources.Source], encode: similarity.EncodeFn, out_root: str, *,
                    sigma1: float, sigma2: float, train_classes: Sequence[Sequence[str]],
                    train_name: str = 'coco_panoptic_133',
                    prompting: similarity.Prompting = similarity.Prompting(),
                    manual: build.Manual = build.Manual(), background: str = 'others',
                    encoder_id: str = '', progress: bool = True) -> dict:
  """Builds ``out_root/openbench`` (docs/CONTRACTS.md) from ``srcs``; returns stats.json's dict."""
  if background not in build.BACKGROUND_CHOICES:
    raise ValueError(f'background: expected one of {build.BACKGROUND_CHOICES}, got {background!r}')
  for name, v in (('sigma1', sigma1), ('sigma2', sigma2)):
    if not np.isfinite(v):
      raise ValueError(f'{name}: expected a finite similarity threshold, got {v}')
  work, base = os.path.join(out_root, 'openbench_build'), os.path.join(out_root, 'openbench')
  classes = build.score_classes(srcs, encode, train_classes, prompting, manual)
  records = scan(srcs, work, progress)
  by_name = {s.name: s for s in srcs}
  counts = {s.name: {'images': len(s), 'kept': 0, 'above sigma1': 0, 'no class': 0,
                     'only others': 0, 'excluded': 0} for s in srcs}
  kept, used = [], set()
  for src in srcs:
    for i in range(len(src)):
      rec = records[src[i].stem]
      fate = build.decide(rec, classes[src.name], sigma1, sigma2, manual)
      counts[src.name][fate['reason']] += 1
      if fate['keep']:
        kept.append((rec, fate['similarity']))
        used.update(fate['targets'])
  if not kept:
    raise ValueError(f'no image kept with sigma1={sigma1}, sigma2={sigma2}: {counts}')
  vocabulary = build.final_vocabulary(classes, used)
  luts = {s.name: build.label_lut(classes[s.name], vocabulary, sigma2, background) for s in srcs}
  check_config(os.path.join(work, 'write_config.json'),
               {'sigma1': sigma1, 'sigma2': sigma2, 'prompting': prompting.describe(),
                'manual': manual.as_dict(), 'background': background, 'encoder': encoder_id,
                'train_classes': train_name, 'vocabulary': vocabulary},
               'written', f'{base} and {os.path.join(work, "write*")}')
  path = os.path.join(work, 'written.jsonl')
  done = {r['stem'] for r in read_jsonl(path)}
  for d in ('images', 'annotations'):
    os.makedirs(os.path.join(base, d), exist_ok=True)
  with open(path, 'a', encoding='utf-8') as f:
    for rec, sim in tqdm.tqdm(kept, desc='write', disable=not progress):
      if rec['stem'] in done:
        continue
      src = by_name[rec['source']]
      item = src[rec['index']]
      label = luts[src.name][src.read_label(rec['index']) + 2]  # (H, W) uint16
      ann = os.path.join(base, 'annotations', item.stem + '.png')
      with atomic_io.open_atomic(ann, 'wb') as png:
        Image.fromarray(label).save(png, format='PNG')
      copy_image(item.image_path, os.path.join(base, 'images', item.stem + '.jpg'), label.shape,
                 item.label_path)
      f.write(json.dumps({'stem': item.stem, 'image': item.image_path, 'label': item.label_path,
                          'similarity': sim}, sort_keys=True) + '\n')
      f.flush()
  build.write_class_file(vocabulary, os.path.join(base, 'class_names.txt'))
  stats = build.vocabulary_stats(encode, vocabulary, train_classes, prompting)
  stats.update({'name': 'OpenBench', 'num_classes': len(vocabulary), 'num_images': len(kept),
                'sigma1': sigma1, 'sigma2': sigma2, 'prompting': prompting.describe(),
                'train_classes': train_name, 'background': background, 'sources': counts,
                'similarity_classes': len(vocabulary) - 1})
  stats['table_row'] = similarity.table_row('OpenBench', {**stats, 'num_classes': len(vocabulary)},
                                            len(kept))
  build.atomic_write(os.path.join(base, 'stats.json'), json.dumps(stats, indent=1, sort_keys=True))
  return stats
