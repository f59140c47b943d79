"""data/prepare_*.py on generated official-format downloads, read back by the dataset readers."""
import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
from PIL import Image

from ovsnet_jax.input import IGNORE_LABEL, layouts
from ovsnet_jax.input.datasets import get_dataset
from ovsnet_jax.input.datasets import label_conversion as lc

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data')


def _script(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(DATA, f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _jpeg(path, hw, value=120):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full(hw + (3,), value, np.uint8)).save(path)


def _label(path, array, palette=False):
  """Writes a label PNG: 8-bit gray, or palette indices as VOC's SegmentationClass."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if palette:
    im = Image.frombytes('P', array.shape[::-1], array.tobytes())
    im.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
  else:
    im = Image.fromarray(array)
  im.save(path)


def test_ade150_shift_hand_computed_and_end_to_end(tmp_path):
  np.testing.assert_array_equal(
      lc.ade150_from_scene_parsing(np.array([[0, 1, 2, 150]], np.uint8)), [[255, 0, 1, 149]])
  base = tmp_path / 'ADEChallengeData2016'
  raw = np.array([[0, 1, 75, 150]] * 3, np.uint8)
  for split, n in (('training', 1), ('validation', 2)):
    for i in range(n):
      _jpeg(str(base / 'images' / split / f'ADE_{split[:3]}_{i:08d}.jpg'), (3, 4))
      _label(str(base / 'annotations' / split / f'ADE_{split[:3]}_{i:08d}.png'), raw)
  counts = _script('prepare_ade20k_150').main(['--root', str(tmp_path), '--workers', '1'])
  assert counts == {'training': 1, 'validation': 2}
  ex = get_dataset('ade150', str(tmp_path), 'val')[1]
  np.testing.assert_array_equal(ex['sem_seg'], [[IGNORE_LABEL, 0, 74, 149]] * 3)


def test_voc_20_and_21_from_palette_segmentation_class(tmp_path):
  voc = tmp_path / 'VOCdevkit' / 'VOC2012'
  raw = np.array([[0, 1, 20, 255], [15, 0, 255, 3]], np.uint8)
  for split, ids in (('train', ['2007_000032']), ('val', ['2007_000033', '2007_000042'])):
    (voc / 'ImageSets' / 'Segmentation').mkdir(parents=True, exist_ok=True)
    (voc / 'ImageSets' / 'Segmentation' / f'{split}.txt').write_text('\n'.join(ids) + '\n')
    for i in ids:
      _jpeg(str(voc / 'JPEGImages' / f'{i}.jpg'), (2, 4))
      _label(str(voc / 'SegmentationClass' / f'{i}.png'), raw, palette=True)
  assert Image.open(voc / 'SegmentationClass' / '2007_000033.png').mode == 'P'
  counts = _script('prepare_pascal_voc').main(['--root', str(tmp_path), '--workers', '2'])
  assert counts == {'training': 1, 'validation': 2}
  ex21 = get_dataset('voc21', str(tmp_path), 'val')[0]
  ex20 = get_dataset('voc20', str(tmp_path), 'val')[0]
  np.testing.assert_array_equal(ex21['sem_seg'], [[0, 1, 20, -1], [15, 0, -1, 3]])
  np.testing.assert_array_equal(ex20['sem_seg'], [[-1, 0, 19, -1], [14, -1, -1, 2]])
  assert ex21['file_name'].endswith('pascal_voc_d2/images/validation/2007_000033.jpg')


def test_cityscapes_label_ids_to_train_ids(tmp_path):
  truth = layouts.write_cityscapes(str(tmp_path), num_images=3, train_ids=False)
  with pytest.raises(FileNotFoundError):
    get_dataset('cityscapes', str(tmp_path), 'val')
  counts = _script('prepare_cityscapes').main(
      ['--root', str(tmp_path), '--splits', 'val', '--workers', '1'])
  assert counts == {'val': 3}
  ds = get_dataset('cityscapes', str(tmp_path), 'val')
  for i, t in enumerate(truth):
    np.testing.assert_array_equal(ds[i]['sem_seg'], t['sem_seg'])
  # Hand-checked: unlabeled 0, road 7, parking 9, building 11, sky 23, caravan 29, bicycle 33.
  np.testing.assert_array_equal(
      lc.cityscapes_train_ids(np.array([[0, 7, 9, 11, 23, 29, 33]], np.uint8)),
      [[255, 0, 255, 2, 10, 255, 18]])


def test_cityscapes_polygons_hand_computed(tmp_path):
  polygons = {'imgHeight': 4, 'imgWidth': 6, 'objects': [
      {'label': 'road', 'polygon': [[0, 0], [5, 0], [5, 3], [0, 3]]},
      {'label': 'cargroup', 'polygon': [[1, 1], [2, 1], [2, 2], [1, 2]]},
      {'label': 'license plate', 'polygon': [[1, 1], [1, 1], [1, 1]]},
      {'label': 'sky', 'polygon': [[4, 0], [5, 0], [5, 0]], 'deleted': 1},
      {'label': 'person', 'polygon': [[5, 3], [5, 3], [5, 3]]},
  ]}
  expected = np.zeros((4, 6), np.uint8)
  expected[1:3, 1:3] = 13  # car (from 'cargroup'), drawn over the road
  expected[3, 5] = 11  # a one-pixel person
  np.testing.assert_array_equal(lc.cityscapes_train_ids_from_polygons(polygons), expected)
  gt = tmp_path / 'cityscapes' / 'gtFine' / 'val' / 'lindau'
  gt.mkdir(parents=True)
  (gt / 'lindau_000000_000019_gtFine_polygons.json').write_text(json.dumps(polygons))
  _script('prepare_cityscapes').main(['--root', str(tmp_path), '--splits', 'val',
                                      '--source', 'polygons', '--workers', '1'])
  out = np.asarray(Image.open(gt / 'lindau_000000_000019_gtFine_labelTrainIds.png'))
  np.testing.assert_array_equal(out, expected)
  bad = dict(polygons, objects=[{'label': 'spaceship', 'polygon': [[0, 0], [1, 1], [0, 1]]}])
  with pytest.raises(ValueError, match="x.json: unknown Cityscapes label 'spaceship'"):
    lc.cityscapes_train_ids_from_polygons(bad, 'x.json')


def test_pascal_context_59_and_459_from_mat(tmp_path):
  voc = tmp_path / 'VOCdevkit' / 'VOC2010'
  # 0 unlabeled, 1 accordion (rare), 2 aeroplane (59: 0), 9 bag (59: 1), 458 (59: 58), 459 wool.
  label_map = np.array([[0, 1, 2, 9], [458, 459, 2, 0]], np.uint16)
  images = [{'image_id': 1, 'file_name': '2008_000002.jpg', 'phase': 'train'},
            {'image_id': 2, 'file_name': '2008_000003.jpg', 'phase': 'val'}]
  (voc / 'trainval').mkdir(parents=True)
  (voc / 'trainval_merged.json').write_text(json.dumps({'images': images}))
  for im in images:
    _jpeg(str(voc / 'JPEGImages' / im['file_name']), (2, 4))
    scipy.io.savemat(str(voc / 'trainval' / (im['file_name'][:-4] + '.mat')),
                     {'LabelMap': label_map})
  counts = _script('prepare_pascal_context').main(['--root', str(tmp_path), '--workers', '1'])
  assert counts == {'training': 1, 'validation': 1}
  ex59 = get_dataset('pc59', str(tmp_path), 'val')[0]
  ex459 = get_dataset('pc459', str(tmp_path), 'val')[0]
  np.testing.assert_array_equal(ex59['sem_seg'], [[-1, -1, 0, 1], [58, -1, 0, -1]])
  np.testing.assert_array_equal(ex459['sem_seg'], [[-1, 0, 1, 8], [457, 458, 1, -1]])
  assert len(lc.PASCAL_CTX_59_IDS) == 60


def test_coco_stuff_from_stuffthingmaps(tmp_path):
  # stored = COCO id - 1: person (id 1) 0, toothbrush (90) 89, id 12 (unused) 11, banner (92) 91,
  # wood (182) 181, unlabeled 255.
  raw = np.array([[0, 89, 11], [91, 181, 255]], np.uint8)
  np.testing.assert_array_equal(lc.coco_stuff_from_stuffthingmaps(raw),
                                [[0, 79, 255], [80, 170, 255]])
  for split in ('train2017', 'val2017'):
    _jpeg(str(tmp_path / 'coco' / split / '000000000139.jpg'), (2, 3))
    _label(str(tmp_path / 'coco' / 'stuffthingmaps' / split / '000000000139.png'), raw)
  counts = _script('prepare_coco_stuff').main(['--root', str(tmp_path), '--workers', '1'])
  assert counts == {'train2017': 1, 'val2017': 1}
  ex = get_dataset('coco_stuff171', str(tmp_path), 'val')[0]
  np.testing.assert_array_equal(ex['sem_seg'], [[0, 79, -1], [80, 170, -1]])


def test_ade847_from_full_release(tmp_path):
  ids = json.load(open(os.path.join(DATA, 'ade20k_847_ids.json')))
  assert len(ids) == 847 and (ids[0], ids[-1]) == (2978, 3148)  # wall, adding machine
  folder = 'ADE20K_2021_17_01/images/ADE/validation/urban/street'
  seg = np.zeros((520, 600, 3), np.uint8)
  seg[:, :300] = (2978 // 256 * 10, 2978 % 256, 0)  # wall -> 0
  seg[:, 300:] = (3148 // 256 * 10 + 7, 3148 % 256, 9)  # R // 10 drops the 7 -> 846
  seg[:10] = (0, 5, 0)  # class 5, not among the 847 -> ignore
  names = ['ADE_val_00000001.jpg', 'ADE_train_00000002.jpg']
  for name in names:
    _jpeg(str(tmp_path / folder / name), (520, 600))
    Image.fromarray(seg).save(tmp_path / folder / name.replace('.jpg', '_seg.png'))
  with open(tmp_path / 'ADE20K_2021_17_01' / 'index_ade20k.pkl', 'wb') as f:
    # The official index also holds numpy arrays (e.g. objectPresence): the restricted reader allows them.
    pickle.dump({'folder': [folder] * 2, 'filename': names, 'objectPresence': np.eye(3, dtype=np.uint16),
                 'scene': np.array(['street', 'street'], dtype=object)}, f)
  counts = _script('prepare_ade20k_847').main(['--root', str(tmp_path), '--workers', '1'])
  assert counts == {'training': 1, 'validation': 1}
  ex = get_dataset('ade847', str(tmp_path), 'val')[0]
  assert ex['image'].shape == (512, 591, 3)  # short side 520 -> 512, 600 * 512 / 520 = 590.8
  expected = lc.resize_nearest(np.where(np.arange(600) < 300, 0, 846)[None].repeat(520, 0),
                               (512, 591)).astype(np.int32)
  expected[:10] = IGNORE_LABEL  # rows 0..9 of 512 come from source rows 0..9
  np.testing.assert_array_equal(ex['sem_seg'], expected)
  assert np.abs(ex['image'].astype(int) - 120).max() <= 2


class _Payload:
  """A pickle that runs `os.system` when loaded with `pickle.load`."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_crafted_ade847_index_runs_nothing(tmp_path):
  marker = tmp_path / 'payload_ran'
  index = tmp_path / 'ADE20K_2021_17_01' / 'index_ade20k.pkl'
  index.parent.mkdir()
  index.write_bytes(pickle.dumps({'folder': [_Payload(marker)], 'filename': ['ADE_val_00000001.jpg']}))
  pickle.loads(pickle.dumps(_Payload(tmp_path / 'control')))  # the payload is real: plain pickle runs it
  assert (tmp_path / 'control').exists()
  with pytest.raises(ValueError, match=re.escape(f'{index}: not a valid ADE20K index (UnpicklingError: refusing ')):
    _script('prepare_ade20k_847').main(['--root', str(tmp_path), '--workers', '1'])
  assert not marker.exists()
  index.write_bytes(pickle.dumps(['not', 'a', 'dict']))
  with pytest.raises(ValueError, match="expected a dict with 'folder' and 'filename' lists, got list"):
    _script('prepare_ade20k_847').main(['--root', str(tmp_path), '--workers', '1'])


def test_resize_hand_computed():
  label = np.arange(8).reshape(2, 4)
  np.testing.assert_array_equal(lc.resize_nearest(label, (1, 2)), [[0, 2]])
  np.testing.assert_array_equal(lc.resize_nearest(label, (4, 8))[3], [4, 4, 5, 5, 6, 6, 7, 7])
  image = np.array([[[0], [100]]], np.uint8)  # (1, 2, 1)
  np.testing.assert_array_equal(lc.resize_bilinear(image, (1, 1)), [[[50]]])
  np.testing.assert_array_equal(lc.resize_bilinear(image, (1, 4))[0, :, 0], [0, 25, 75, 100])
  assert lc.ade847_resized_size(400, 900) is None
  assert lc.ade847_resized_size(1024, 768) == (683, 512)


def test_missing_download_names_what_to_fetch(tmp_path):
  with pytest.raises(FileNotFoundError, match=re.escape(
      f'{tmp_path}/ADEChallengeData2016/annotations/training does not exist: unzip '
      'ADEChallengeData2016.zip')):
    _script('prepare_ade20k_150').main(['--root', str(tmp_path), '--workers', '1'])
  with pytest.raises(FileNotFoundError, match='trainval_merged.json does not exist'):
    _script('prepare_pascal_context').main(['--root', str(tmp_path), '--workers', '1'])
  with pytest.raises(ValueError, match=re.escape('COCO stuffthingmaps: expected a 2-D uint8')):
    lc.coco_stuff_from_stuffthingmaps(np.zeros((2, 2, 3), np.uint8))


def test_script_runs_from_the_command_line(tmp_path):
  layouts.write_cityscapes(str(tmp_path), num_images=1, train_ids=False)
  result = subprocess.run(
      [sys.executable, os.path.join(DATA, 'prepare_cityscapes.py'), '--root', str(tmp_path),
       '--splits', 'val', '--workers', '1'], capture_output=True, text=True, check=True)
  assert "{'val': 1}" in result.stdout
  assert len(get_dataset('cityscapes', str(tmp_path), 'val')) == 1


def test_resize_parity_with_torch_interpolate():
  """cv2's INTER_LINEAR / INTER_NEAREST use the same sampling as torch's interpolate
  (bilinear align_corners=False without antialiasing; 'nearest' = floor(dst * src / dst_size)).
  Tolerance: bilinear within 1 grey level (rounding), nearest exact."""
  import torch
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
  for hw in [(20, 29), (64, 91), (37, 26)]:
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].double(), size=hw, mode='bilinear',
        align_corners=False, antialias=False)[0].permute(1, 2, 0).numpy()
    ours = lc.resize_bilinear(image, hw).astype(np.float64)
    assert np.abs(ours - np.clip(np.rint(ref), 0, 255)).max() <= 1
    label = rng.integers(0, 847, size=(37, 53)).astype(np.uint16)
    ref = torch.nn.functional.interpolate(torch.from_numpy(label.astype(np.float32))[None, None],
                                          size=hw, mode='nearest')[0, 0].numpy()
    np.testing.assert_array_equal(lc.resize_nearest(label, hw), ref.astype(np.uint16))
