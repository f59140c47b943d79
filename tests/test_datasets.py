"""Every dataset reader on a tiny dataset written in its real layout equals the written truth."""
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from ovsnet_jax.input import IGNORE_LABEL, layouts
from ovsnet_jax.input.datasets import DATASETS, dataset_info, get_dataset
from ovsnet_jax.input.datasets import coco, decode, openbench

SEMANTIC = ['ade150', 'ade847', 'pc59', 'pc459', 'voc20', 'voc21', 'coco_stuff171', 'cityscapes',
            'openbench']
CLASS_FILES = os.path.join(os.path.dirname(decode.__file__), '..', '..', 'text', 'class_names')


def _write(name, root, **kw):
  return getattr(layouts, f'write_{name}')(root, **kw)


@pytest.mark.parametrize('name', SEMANTIC)
def test_semantic_reader_equals_written_truth(name, tmp_path):
  truth = _write(name, str(tmp_path), num_images=3, seed=1)
  ds = get_dataset(name, str(tmp_path), 'val')
  assert len(ds) == 3
  k = DATASETS[name].num_classes or 286
  for i, t in enumerate(truth):
    ex = ds[i]
    assert set(ex) == {'image', 'sem_seg', 'file_name'}
    assert ex['file_name'] == t['file_name']
    assert ex['image'].dtype == np.uint8 and ex['image'].shape == t['pixels'].shape
    np.testing.assert_array_equal(ex['image'], t['image'])
    # The JPEG round trip stays close to the encoded pixels (PNG images are exact).
    assert np.abs(ex['image'].astype(int) - t['pixels']).mean() < 2.0
    assert ex['sem_seg'].dtype == np.int32
    np.testing.assert_array_equal(ex['sem_seg'], t['sem_seg'])
    assert ex['sem_seg'].min() == IGNORE_LABEL and ex['sem_seg'].max() <= k - 1
  # Classes 0 and K-1 are present somewhere (16-bit values > 255 for 847/459/openbench).
  values = np.concatenate([ds[i]['sem_seg'].ravel() for i in range(len(ds))])
  assert 0 in values and (k - 1) in values


def test_splits_are_separate_folders(tmp_path):
  train = layouts.write_ade150(str(tmp_path), num_images=2, seed=3, split='train')
  val = layouts.write_ade150(str(tmp_path), num_images=1, seed=4, split='val')
  ds_train = get_dataset('ade150', str(tmp_path), 'train')
  ds_val = get_dataset('ade150', str(tmp_path), 'val')
  assert len(ds_train) == 2 and len(ds_val) == 1
  assert ds_train[1]['file_name'].endswith(
      'ADEChallengeData2016/images/training/ADE_train_00000002.jpg')
  np.testing.assert_array_equal(ds_train[1]['sem_seg'], train[1]['sem_seg'])
  np.testing.assert_array_equal(ds_val[0]['sem_seg'], val[0]['sem_seg'])


def test_cityscapes_layout_and_train_ids(tmp_path):
  truth = layouts.write_cityscapes(str(tmp_path), num_images=2)
  ds = get_dataset('cityscapes', str(tmp_path), 'val')
  assert ds[0]['file_name'].endswith(
      'cityscapes/leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png')
  ex = ds[0]
  ids = truth[0]['label_ids']
  # Hand-checked rows of the official table: road 7 -> 0, sky 23 -> 10, bicycle 33 -> 18,
  # parking 9 and unlabeled 0 -> ignored.
  for label_id, expected in [(7, 0), (23, 10), (33, 18), (9, IGNORE_LABEL), (0, IGNORE_LABEL)]:
    if (ids == label_id).any():
      assert (ex['sem_seg'][ids == label_id] == expected).all()


def test_coco_panoptic_reader_equals_written_truth(tmp_path):
  truth = layouts.write_coco_panoptic(str(tmp_path), num_images=3, seed=2, split='train')
  ds = get_dataset('coco_panoptic', str(tmp_path), 'train')
  assert len(ds) == 3 and ds.num_skipped == 0
  for i, t in enumerate(truth):
    ex = ds[i]
    assert set(ex) == {'image', 'segment_ids', 'segments', 'file_name'}
    assert ex['file_name'] == t['file_name']
    np.testing.assert_array_equal(ex['image'], t['image'])
    assert ex['segment_ids'].dtype == np.int32
    np.testing.assert_array_equal(ex['segment_ids'], t['segment_ids'])
    assert ex['segments'] == t['segments']
    assert (ex['segment_ids'] == 0).any()  # void pixels
    assert ex['segment_ids'].max() > 65535  # ids use the B channel too
  with open(tmp_path / 'coco/annotations/panoptic_train2017.json') as f:
    data = json.load(f)
  assert [c['id'] for c in data['categories']][78:82] == [89, 90, 92, 93]  # the real id gap


def test_coco_panoptic_rgb_id_and_category_mapping_hand_computed(tmp_path):
  rgb = np.zeros((2, 3, 3), np.uint8)
  rgb[0, 0] = (1, 2, 3)  # 1 + 2 * 256 + 3 * 65536 = 197121
  rgb[1, 2] = (255, 0, 0)
  Image.fromarray(rgb).save(tmp_path / 'p.png')
  np.testing.assert_array_equal(decode.read_rgb_ids(str(tmp_path / 'p.png')),
                                [[197121, 0, 0], [0, 0, 255]])
  m = coco.panoptic_id_to_contiguous()
  assert (m[1], m[90], m[92], m[200], len(m)) == (0, 79, 80, 132, 133)
  assert 12 not in m and 91 not in m and 201 not in m


def test_coco_panoptic_skips_unannotated_images_and_reports(tmp_path, caplog):
  layouts.write_coco_panoptic(str(tmp_path), num_images=2)
  path = tmp_path / 'coco/annotations/panoptic_val2017.json'
  data = json.loads(path.read_text())
  data['images'].append(dict(data['images'][0], id=999999999, file_name='000999999999.jpg'))
  path.write_text(json.dumps(data))
  with caplog.at_level(logging.WARNING):
    ds = get_dataset('coco_panoptic', str(tmp_path), 'val')
  assert len(ds) == 2 and ds.num_skipped == 1
  assert '1 images of' in caplog.text and 'skipped' in caplog.text


def test_exif_orientation_is_applied(tmp_path):
  layouts.write_ade150(str(tmp_path), num_images=1, size=(16, 24))
  image_path = tmp_path / 'ADEChallengeData2016/images/validation/ADE_val_00000001.jpg'
  stored = np.asarray(Image.open(image_path))  # (16, 24, 3)
  # Store the image rotated and tag it with EXIF orientation 8 (rotate 90 CW to display).
  exif = Image.Exif()
  exif[0x0112] = 8
  Image.fromarray(np.rot90(stored, k=-1).copy()).save(image_path, exif=exif, quality=95,
                                                      subsampling=0)
  with Image.open(image_path) as im:
    expected = np.rot90(np.asarray(im.convert('RGB')), k=1)
  ex = get_dataset('ade150', str(tmp_path), 'val')[0]
  assert ex['image'].shape == (16, 24, 3)
  np.testing.assert_array_equal(ex['image'], expected)


def test_registry_class_lists_match_class_name_files():
  for name, info in DATASETS.items():
    assert info.task in ('semantic', 'panoptic')
    if info.class_names is None:
      continue
    path = os.path.join(CLASS_FILES, info.class_names + '.txt')
    assert openbench.count_classes(path) == info.num_classes, name
  assert dataset_info('cityscapes').test_size == (1024, 2560)
  assert dataset_info('ade847').ignore_value == 65535


def test_openbench_class_count_from_vocabulary_file(tmp_path):
  layouts.write_openbench(str(tmp_path), num_images=1, num_classes=5)
  ds = get_dataset('openbench', str(tmp_path), 'val')
  assert ds.num_classes == 5 and ds.class_names_file.endswith('openbench/class_names.txt')
  (tmp_path / 'c.txt').write_text('0:invalid_class_id\n1:cat,kitty\n2:dog\n\n')
  assert openbench.count_classes(str(tmp_path / 'c.txt')) == 2


def test_reader_is_a_grain_source(tmp_path):
  import grain
  truth = layouts.write_voc21(str(tmp_path), num_images=2)
  ds = grain.MapDataset.source(get_dataset('voc21', str(tmp_path), 'val'))
  assert len(ds) == 2
  np.testing.assert_array_equal(ds[1]['sem_seg'], truth[1]['sem_seg'])
