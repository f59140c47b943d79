"""OpenBench construction on generated FoodSeg103 / ImageNet-S / CamVid layouts.

Unit cases inject an encoder whose class embeddings have known similarities to the training
classes (s e_train + sqrt(1 - s^2) e_own, orthonormal e's), so every threshold decision is known;
one test runs the launcher with the real tiny CLIP text tower.
"""
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from ovsnet_jax.input.datasets import get_dataset
from ovsnet_jax.openbench import build, similarity, source_layouts, sources, writer
from ovsnet_jax.text import classifier as classifier_lib
from ovsnet_jax.text import vocab

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'launch'))
import build_openbench  # pylint: disable=g-import-not-at-top,wrong-import-position

TRAIN = [['road'], ['sky'], ['car']]
SIMS = {'candy': 0.2, 'egg tart': 0.5, 'cheese butter': 0.85, 'bread': 0.45,  # FoodSeg103 ids 1..4
        'crane': 0.4, 'oystercatcher': 0.26, 'tabby': 0.75, 'French loaf': 0.45,  # ImageNet-S ids 1..3
        'sky': 1.0, 'building': 0.6, 'pole': 0.3, 'road': 1.0, 'pavement': 0.9, 'tree': 0.4,
        'sign symbol': 0.7, 'fence': 0.5, 'car': 1.0, 'pedestrian': 0.95, 'bicyclist': 0.65}
NEAR = {'sky': 1, 'car': 2}  # nearest training class of each source class (default road)
SIGMA1, SIGMA2 = 0.7, 0.8
MANUAL = {'exclude_classes': ['camvid:tree'], 'exclude_images': ['foodseg103_test_00003'],
          'merge': {'imagenet_s:French loaf': 'bread'}}


def known_encoder(class_names):
  """Main names -> unit vectors with max similarity SIMS[name] to TRAIN (D = 32)."""
  basis = np.eye(32, dtype=np.float32)
  names = sorted(SIMS)
  embeds = np.zeros((len(class_names), 1, 32), np.float32)
  for k, (name,) in enumerate(class_names):
    if [name] in TRAIN:
      embeds[k, 0] = basis[TRAIN.index([name])]
    else:
      s = SIMS[name]
      embeds[k, 0] = s * basis[NEAR.get(name, 0)] + np.sqrt(1 - s * s) * basis[3 + names.index(name)]
  return {'embeds': embeds, 'valid': np.ones((len(class_names), 1), bool)}


def write_sources(root, size=(16, 24)):
  """The constructed images; returns {stem: (source, stored label)} and the roots."""
  full = lambda v: np.full(size, v, np.int64)  # pylint: disable=unnecessary-lambda-assignment
  rng = np.random.default_rng(0)
  food = [source_layouts.block_labels(rng, [0, 1, 3], size), full(3), source_layouts.block_labels(rng, [0, 255], size),
          source_layouts.block_labels(rng, [2, 255, 1], size), full(4)]
  imnet = [source_layouts.block_labels(rng, [0, 1, 1000], size), full(2), source_layouts.block_labels(rng, [3, 2], size)]
  cam = [source_layouts.block_labels(rng, [0, 3, 11], size), source_layouts.block_labels(rng, [2, 4, 9], size),
         source_layouts.block_labels(rng, [7, 8], size), source_layouts.block_labels(rng, [5, 3], size)]
  roots = {'foodseg103': str(root / 'FoodSeg103'), 'imagenet_s': str(root / 'ImageNet-S'),
           'camvid': str(root / 'SegNet')}
  stems = source_layouts.write_foodseg103(roots['foodseg103'], food,
                                          ['background', 'candy', 'egg tart', 'cheese butter', 'bread'])
  stems += source_layouts.write_imagenet_s(roots['imagenet_s'], imnet,
                                           [['oystercatcher'], ['tabby', 'tabby cat'], ['French loaf']])
  stems += source_layouts.write_camvid(roots['camvid'], cam)
  return dict(zip(stems, food + imnet + cam)), roots


# Stored id -> expected OpenBench value (vocabulary below; 6 = others, -1 = ignore).
VOCAB = [['candy'], ['bread', 'French loaf'], ['oystercatcher'], ['tabby', 'tabby cat'], ['pole'], ['fence'],
         ['others']]
EXPECTED = {'foodseg103': {0: 6, 1: 0, 2: -1, 3: 6, 4: 1, 255: -1},
            'imagenet_s': {0: 6, 1: 2, 2: 3, 3: 1, 1000: -1},
            'camvid': {2: 4, 4: 6, 9: 6, 7: 5, 8: 6, 11: -1}}
KEPT = {'foodseg103_test_00000': 0.2, 'foodseg103_test_00004': 0.45,
        'imagenet_s_validation_ILSVRC2012_val_00000001': 0.26,
        'imagenet_s_validation_ILSVRC2012_val_00000003': 0.45, 'camvid_test_0001TP_006720': 0.3,
        'camvid_test_0001TP_006750': 0.5}


def run_build(tmp_path, roots):
  manual = tmp_path / 'manual.json'
  manual.write_text(json.dumps(MANUAL))
  srcs = [sources.get_source(k, v) for k, v in roots.items()]
  manual_obj = build.read_manual(str(manual))
  return writer.build_openbench(srcs, known_encoder, str(tmp_path / 'd2'), sigma1=SIGMA1, sigma2=SIGMA2,
                                train_classes=TRAIN, manual=manual_obj, progress=False)


def test_source_readers_decode_the_official_layouts(tmp_path):
  truth, roots = write_sources(tmp_path)
  food = sources.FoodSeg103(roots['foodseg103'])
  assert food.class_names == [['candy'], ['egg tart'], ['cheese butter'], ['bread']]
  label = food.read_label(0)
  stored = truth[food[0].stem]
  np.testing.assert_array_equal(label, np.where(stored == 0, sources.BACKGROUND, stored - 1))
  imnet = sources.ImageNetS(roots['imagenet_s'])
  assert imnet.class_names == [['oystercatcher'], ['tabby', 'tabby cat'], ['French loaf']]
  for i in range(len(imnet)):  # 1000 = ignore is stored as R=232, G=3
    stored = truth[imnet[i].stem]
    ref = np.select([stored == 0, stored == 1000], [sources.BACKGROUND, sources.IGNORE], stored - 1)
    np.testing.assert_array_equal(imnet.read_label(i), ref)
  cam = sources.CamVid(roots['camvid'])
  assert len(cam) == 4 and cam.class_names[4] == ['pavement', 'sidewalk']
  np.testing.assert_array_equal(cam.read_label(0), np.where(truth[cam[0].stem] == 11, -1, truth[cam[0].stem]))


def test_official_32_class_camvid_colours(tmp_path):
  colors = [((64, 128, 64), 'Animal'), ((0, 0, 0), 'Void'), ((128, 128, 128), 'Sky'),
            ((64, 0, 128), 'SUVPickupTruck'), ((192, 0, 192), 'MotorcycleScooter'), ((128, 128, 64), 'RoadShoulder')]
  labels = [source_layouts.block_labels(np.random.default_rng(i), [0, 1, 3, 5], (16, 24)) for i in range(2)]
  stems = source_layouts.write_camvid32(str(tmp_path), labels, colors)
  src = sources.get_source('camvid32', str(tmp_path))
  assert [it.stem for it in src] == stems
  assert src.class_names == [['animal'], ['sky'], ['suv', 'pickup truck'], ['motorcycle', 'scooter'],
                             ['road shoulder']]
  to_class = {0: 0, 1: sources.IGNORE, 3: 2, 5: 4}  # colour index -> class (Void ignored)
  for i in range(2):
    np.testing.assert_array_equal(src.read_label(i), np.vectorize(to_class.get)(labels[i]))
  Image.fromarray(np.full((16, 24, 3), 7, np.uint8)).save(src[0].label_path)
  with pytest.raises(ValueError, match=r'_L.png: label values \[460551\] are not category ids'):
    src.read_label(0)


def test_source_readers_reject_bad_input(tmp_path):
  _, roots = write_sources(tmp_path)
  bad = os.path.join(roots['camvid'], 'CamVid/testannot/0001TP_006690.png')
  Image.fromarray(np.full((16, 24), 12, np.uint8)).save(bad)
  with pytest.raises(ValueError, match=f'{bad}: label values \\[12\\] are not category ids'):
    sources.CamVid(roots['camvid']).read_label(0)
  with open(os.path.join(roots['foodseg103'], 'category_id.txt'), 'a') as f:
    f.write('7\tsoup\n')
  with pytest.raises(ValueError, match='category_id.txt: line 6: expected "5<tab>name"'):
    sources.FoodSeg103(roots['foodseg103'])
  with pytest.raises(ValueError, match=r"camvid: unknown splits \['validation'\]"):
    sources.CamVid(roots['camvid'], ('validation',))
  with pytest.raises(FileNotFoundError, match='ImageNet synset names'):
    sources.ImageNetS(str(tmp_path / 'nowhere'))


def test_threshold_decisions_on_constructed_similarities():
  classes = [build.SourceClass('s:a', ('a',), 0.2, 'road', 'a'), build.SourceClass('s:b', ('b',), 0.85, 'road', 'b'),
             build.SourceClass('s:c', ('c',), 0.75, 'road', 'c'), build.SourceClass('s:x', ('x',), 0.1, 'road', None)]
  manual = build.Manual()
  near = build.decide({'stem': 'i', 'present': [1]}, classes, SIGMA1, SIGMA2, manual)
  assert near == {'keep': False, 'similarity': 0.85, 'reason': 'above sigma1', 'targets': []}
  mixed = build.decide({'stem': 'i', 'present': [0, 1, 2]}, classes, SIGMA1, SIGMA2, manual)
  assert mixed == {'keep': True, 'similarity': 0.2, 'reason': 'kept', 'targets': ['a', 'c']}  # b -> others
  excluded_only = build.decide({'stem': 'i', 'present': [3, 1]}, classes, SIGMA1, SIGMA2, manual)
  assert excluded_only['reason'] == 'above sigma1'  # the excluded class does not lower the minimum
  assert build.decide({'stem': 'i', 'present': []}, classes, SIGMA1, SIGMA2, manual)['reason'] == 'no class'
  assert build.decide({'stem': 'i', 'present': [0]}, classes, SIGMA1, 0.1, manual)['reason'] == 'only others'
  assert build.image_similarity([0, 2], np.array([0.3, 0.9, 0.6])) == 0.3
  assert build.keep_image(0.7, 0.7) and not build.keep_image(0.7001, 0.7) and not build.keep_image(np.nan, 1)


def test_build_writes_the_openbench_layout_the_reader_reads(tmp_path):
  truth, roots = write_sources(tmp_path)
  stats = run_build(tmp_path, roots)
  d2 = tmp_path / 'd2'
  assert vocab.read_class_file(str(d2 / 'openbench/class_names.txt')) == VOCAB
  ds = get_dataset('openbench', str(d2), 'val')
  assert len(ds) == len(KEPT)
  for i in range(len(ds)):
    stem = os.path.splitext(os.path.basename(ds[i]['file_name']))[0]
    source = next(s for s in EXPECTED if stem.startswith(s))
    ref = np.vectorize(EXPECTED[source].get)(truth[stem])
    np.testing.assert_array_equal(ds[i]['sem_seg'], ref)
  food = sources.FoodSeg103(roots['foodseg103'])  # JPEGs are copied byte for byte
  with open(food[0].image_path, 'rb') as a, open(d2 / 'openbench/images' / (food[0].stem + '.jpg'), 'rb') as b:
    assert a.read() == b.read()
  cam_png = sources.CamVid(roots['camvid'])[1]  # PNG sources are re-encoded as JPEG q95
  with Image.open(cam_png.image_path) as a, Image.open(d2 / 'openbench/images' / (cam_png.stem + '.jpg')) as b:
    assert np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() < 3.0
  sims = np.array([0.2, 0.45, 0.26, 0.75, 0.3, 0.5])  # the kept classes, 'others' left out
  on_disk = json.loads((d2 / 'openbench/stats.json').read_text())
  assert on_disk == json.loads(json.dumps(stats))
  assert stats['num_classes'] == 7 and stats['num_images'] == 6 and stats['similarity_classes'] == 6
  for key, fn in (('mean', np.mean), ('median', np.median), ('min', np.min), ('max', np.max)):
    assert stats[key] == pytest.approx(float(fn(sims)), abs=1e-6), key
  assert stats['sources']['foodseg103'] == {'images': 5, 'kept': 2, 'above sigma1': 1, 'no class': 1,
                                            'only others': 0, 'excluded': 1}
  assert stats['sources']['camvid'] == {'images': 4, 'kept': 2, 'above sigma1': 2, 'no class': 0,
                                        'only others': 0, 'excluded': 0}
  written = writer.read_jsonl(str(d2 / 'openbench_build/written.jsonl'))
  assert {r['stem']: r['similarity'] for r in written} == pytest.approx(KEPT)


def test_rerun_resumes_and_refuses_changed_settings(tmp_path):
  _, roots = write_sources(tmp_path)
  run_build(tmp_path, roots)
  d2 = tmp_path / 'd2'
  out = d2 / 'openbench'
  before = {p: (out / p).read_bytes() for p in ('class_names.txt', 'stats.json')}
  before.update({f'annotations/{f}': (out / 'annotations' / f).read_bytes() for f in os.listdir(out / 'annotations')})
  # Interrupted run: the last two written images lost, the progress file cut mid-line.
  progress = d2 / 'openbench_build/written.jsonl'
  lines = progress.read_text().splitlines()
  progress.write_text('\n'.join(lines[:4]) + '\n' + lines[4][:10])
  for r in lines[4:]:
    os.remove(out / 'annotations' / (json.loads(r)['stem'] + '.png'))
  # A finished image's label file made unreadable: a resumed run must not read it again.
  finished = json.loads(lines[0])['label']
  with open(finished, 'wb') as f:
    f.write(b'not a png')
  run_build(tmp_path, roots)
  after = {p: (out / p).read_bytes() for p in before}
  assert after == before
  assert len(writer.read_jsonl(str(progress))) == 6
  with pytest.raises(ValueError, match=r"write_config.json: this output was written with other settings "
                                       r"\(changed: \['sigma2'"):
    srcs = [sources.get_source(k, v) for k, v in roots.items()]
    writer.build_openbench(srcs, known_encoder, str(d2), sigma1=SIGMA1, sigma2=0.9, train_classes=TRAIN,
                           manual=build.read_manual(str(tmp_path / 'manual.json')), progress=False)


def test_manual_curation_errors(tmp_path):
  bad = tmp_path / 'bad.json'
  bad.write_text('{"exclude": []}')
  with pytest.raises(ValueError, match=f"{bad}: expected an object with keys"):
    build.read_manual(str(bad))
  _, roots = write_sources(tmp_path)
  srcs = [sources.get_source('camvid', roots['camvid'])]
  with pytest.raises(ValueError, match=r"manual curation: unknown classes \['camvid:trees'\]"):
    build.score_classes(srcs, known_encoder, TRAIN, similarity.Prompting(), build.Manual(('camvid:trees',)))


def test_repeated_names_get_distinct_keys_and_merge_apart(tmp_path):
  labels = [np.full((8, 8), 1), np.full((8, 8), 2)]
  source_layouts.write_imagenet_s(str(tmp_path), labels, [['crane'], ['crane']])
  srcs = [sources.get_source('imagenet_s', str(tmp_path))]
  manual = build.Manual(merge=(('imagenet_s:crane#2', 'crane machine'),))
  rows = build.score_classes(srcs, known_encoder, TRAIN, similarity.Prompting(), manual)['imagenet_s']
  assert [(c.key, c.target) for c in rows] == [('imagenet_s:crane', 'crane'),
                                               ('imagenet_s:crane#2', 'crane machine')]
  assert build.final_vocabulary({'imagenet_s': rows}, {'crane', 'crane machine'}) == [
      ['crane'], ['crane machine', 'crane'], ['others']]


def test_launcher_end_to_end_with_the_tiny_clip_text_tower(tmp_path, tiny_clip_dir):
  _, roots = write_sources(tmp_path)
  out = tmp_path / 'd2'
  argv = [f'--clip={tiny_clip_dir}', f'--sources=camvid={roots["camvid"]},foodseg103={roots["foodseg103"]}',
          f'--out={out}', '--sigma1=1.5', '--sigma2=0.9999', '--templates=photo', '--noprogress']
  assert build_openbench.main(argv) == 0
  names = vocab.read_class_file(str(out / 'openbench/class_names.txt'))
  # Names that are also COCO names have similarity 1 > sigma2: they became 'others'.
  assert names[-1] == ['others']
  assert not {'road', 'car', 'fence', 'tree', 'pavement', 'sky'} & {c[0] for c in names}
  assert ['pole'] in names and ['candy'] in names
  enc = classifier_lib.TextClassifier.from_checkpoint(tiny_clip_dir, templates=('a photo of a {}.',))
  test = enc([c[:1] for c in names[:-1]])['embeds'][:, 0]
  train = enc([c[:1] for c in vocab.load_class_names('coco_panoptic_133')])['embeds'][:, 0]
  ref = (test @ train.T).max(1)
  stats = json.loads((out / 'openbench/stats.json').read_text())
  assert stats['mean'] == pytest.approx(float(ref.mean()), abs=1e-5)
  assert stats['max'] == pytest.approx(float(ref.max()), abs=1e-5) and stats['max'] <= 0.9999
  # CamVid: only image 1 has a non-COCO class (pole); its others hold COCO names only.
  assert stats['sources']['camvid'] == {'images': 4, 'kept': 1, 'above sigma1': 0, 'no class': 0,
                                        'only others': 3, 'excluded': 0}
  assert len(get_dataset('openbench', str(out), 'test')) == stats['num_images'] == 5
