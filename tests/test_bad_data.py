"""Bad datasets raise errors that name the file and what was expected."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from ovsnet_jax.input import layouts
from ovsnet_jax.input.datasets import get_dataset

ADE_IMAGES = 'ADEChallengeData2016/images/validation'
ADE_LABELS = 'ADEChallengeData2016/annotations_detectron2/validation'


def _raises(exc, *fragments):
  """pytest.raises matching every fragment literally, in order."""
  return pytest.raises(exc, match='.*'.join(re.escape(f) for f in fragments))


def test_missing_folder_names_path_and_prepare_script(tmp_path):
  with _raises(FileNotFoundError, 'ade150 images: expected directory',
               os.path.join(str(tmp_path), ADE_IMAGES), 'does not exist',
               f'python data/prepare_ade20k_150.py --root {tmp_path}'):
    get_dataset('ade150', str(tmp_path), 'val')
  layouts.write_ade150(str(tmp_path), num_images=1)
  os.rename(tmp_path / ADE_LABELS, tmp_path / 'moved')
  with _raises(FileNotFoundError, 'ade150 labels', os.path.join(str(tmp_path), ADE_LABELS)):
    get_dataset('ade150', str(tmp_path), 'val')


def test_image_without_label_and_label_without_image(tmp_path):
  layouts.write_ade150(str(tmp_path), num_images=2)
  os.remove(tmp_path / ADE_LABELS / 'ADE_val_00000002.png')
  with _raises(FileNotFoundError, 'image', str(tmp_path / ADE_IMAGES / 'ADE_val_00000002.jpg'),
               'has no label file', str(tmp_path / ADE_LABELS / 'ADE_val_00000002.png')):
    get_dataset('ade150', str(tmp_path), 'val')
  os.remove(tmp_path / ADE_IMAGES / 'ADE_val_00000002.jpg')
  os.rename(tmp_path / ADE_IMAGES / 'ADE_val_00000001.jpg', tmp_path / 'elsewhere.jpg')
  with _raises(FileNotFoundError, 'label', str(tmp_path / ADE_LABELS / 'ADE_val_00000001.png'),
               'has no image file', str(tmp_path / ADE_IMAGES / 'ADE_val_00000001.jpg')):
    get_dataset('ade150', str(tmp_path), 'val')


def test_cityscapes_without_train_ids_names_the_missing_file(tmp_path):
  layouts.write_cityscapes(str(tmp_path), num_images=1, train_ids=False)
  with _raises(FileNotFoundError, 'frankfurt_000000_000019_leftImg8bit.png', 'has no label file',
               'frankfurt_000000_000019_gtFine_labelTrainIds.png', 'prepare_cityscapes.py'):
    get_dataset('cityscapes', str(tmp_path), 'val')


@pytest.mark.parametrize('name,label,value,dtype', [
    ('ade150', 'ADEChallengeData2016/annotations_detectron2/validation/ADE_val_00000001.png',
     150, np.uint8),
    ('ade847', 'ADE20K_2021_17_01/annotations_detectron2/validation/ADE_val_00000001.tif',
     847, np.uint16),
    ('pc459', 'pascal_ctx_d2/annotations_ctx459/validation/2008_000001.tif', 60000, np.uint16),
    ('voc20', 'pascal_voc_d2/annotations_pascal20/validation/2007_000001.png', 20, np.uint8),
])
def test_label_outside_class_range(name, label, value, dtype, tmp_path):
  getattr(layouts, f'write_{name}')(str(tmp_path), num_images=1)
  stored = np.asarray(Image.open(tmp_path / label)).copy()
  stored[0, 0] = value
  Image.fromarray(stored.astype(dtype)).save(tmp_path / label)
  ds = get_dataset(name, str(tmp_path), 'val')
  with _raises(ValueError, str(tmp_path / label), f'label value {value} is outside the class range',
               'is not the ignore value'):
    ds[0]


def test_corrupt_and_truncated_images(tmp_path):
  layouts.write_ade150(str(tmp_path), num_images=2)
  path = tmp_path / ADE_IMAGES / 'ADE_val_00000001.jpg'
  path.write_bytes(path.read_bytes()[:200])  # truncated JPEG
  ds = get_dataset('ade150', str(tmp_path), 'val')
  with _raises(ValueError, str(path), 'cannot decode image'):
    ds[0]
  path = tmp_path / ADE_IMAGES / 'ADE_val_00000002.jpg'
  path.write_bytes(b'not an image at all')
  with _raises(ValueError, str(path), 'cannot decode image'):
    ds[1]


def test_corrupt_label_and_wrong_label_mode(tmp_path):
  layouts.write_pc59(str(tmp_path), num_images=2)
  labels = tmp_path / 'pascal_ctx_d2/annotations_ctx59/validation'
  (labels / '2008_000001.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
  Image.fromarray(np.zeros((24, 40, 3), np.uint8)).save(labels / '2008_000003.png')
  ds = get_dataset('pc59', str(tmp_path), 'val')
  with _raises(ValueError, str(labels / '2008_000001.png'), 'cannot decode label map'):
    ds[0]
  with _raises(ValueError, str(labels / '2008_000003.png'),
               'expected a single-channel label map, got Pillow mode RGB'):
    ds[1]


def test_image_label_size_mismatch(tmp_path):
  layouts.write_ade847(str(tmp_path), num_images=1, size=(24, 32))
  label = tmp_path / 'ADE20K_2021_17_01/annotations_detectron2/validation/ADE_val_00000001.tif'
  Image.fromarray(np.zeros((24, 30), np.uint16)).save(label)
  ds = get_dataset('ade847', str(tmp_path), 'val')
  with _raises(ValueError, str(label), 'label size (H, W) = (24, 30) does not match image',
               'ADE_val_00000001.jpg size (24, 32)'):
    ds[0]


def _panoptic(tmp_path):
  layouts.write_coco_panoptic(str(tmp_path), num_images=2)
  path = tmp_path / 'coco/annotations/panoptic_val2017.json'
  return path, json.loads(path.read_text())


def test_truncated_and_incomplete_panoptic_json(tmp_path):
  path, data = _panoptic(tmp_path)
  text = path.read_text()
  path.write_text(text[:len(text) // 2])
  with _raises(ValueError, str(path), 'invalid JSON'):
    get_dataset('coco_panoptic', str(tmp_path), 'val')
  del data['annotations'][1]['segments_info']
  path.write_text(json.dumps(data))
  with _raises(ValueError, str(path), 'has no field', 'segments_info'):
    get_dataset('coco_panoptic', str(tmp_path), 'val')
  del data['categories']
  path.write_text(json.dumps(data))
  with _raises(ValueError, str(path), "the top level has no field 'categories'"):
    get_dataset('coco_panoptic', str(tmp_path), 'val')


def test_panoptic_missing_png_and_image(tmp_path):
  path, data = _panoptic(tmp_path)
  png = tmp_path / 'coco/panoptic_val2017' / data['annotations'][1]['file_name']
  os.remove(png)
  with _raises(FileNotFoundError, f'panoptic PNG {png}', 'does not exist'):
    get_dataset('coco_panoptic', str(tmp_path), 'val')
  image = tmp_path / 'coco/val2017' / data['images'][0]['file_name']
  os.remove(image)
  with _raises(FileNotFoundError, f'image {image}', 'does not exist'):
    get_dataset('coco_panoptic', str(tmp_path), 'val')


def test_panoptic_unknown_category_and_unlisted_segment(tmp_path):
  path, data = _panoptic(tmp_path)
  data['annotations'][0]['segments_info'][1]['category_id'] = 12  # a gap in the COCO ids
  dropped = data['annotations'][1]['segments_info'].pop(0)
  path.write_text(json.dumps(data))
  ds = get_dataset('coco_panoptic', str(tmp_path), 'val')
  with _raises(ValueError, str(path), 'has category_id 12',
               'not one of the 133 COCO panoptic categories'):
    ds[0]
  png = tmp_path / 'coco/panoptic_val2017' / data['annotations'][1]['file_name']
  with _raises(ValueError, str(png), f'segment id {dropped["id"]} is in the PNG but not in the '
               'segments_info'):
    ds[1]


def test_panoptic_png_must_be_rgb(tmp_path):
  path, data = _panoptic(tmp_path)
  png = tmp_path / 'coco/panoptic_val2017' / data['annotations'][0]['file_name']
  Image.open(png).convert('L').save(png)
  with _raises(ValueError, str(png), 'expected an RGB panoptic PNG, got Pillow mode L'):
    get_dataset('coco_panoptic', str(tmp_path), 'val')[0]


def test_unknown_dataset_split_and_bad_vocabulary(tmp_path):
  with _raises(ValueError, "unknown dataset 'ade151'", "'ade150'"):
    get_dataset('ade151', str(tmp_path), 'val')
  with _raises(ValueError, "ade150: unknown split 'validation'", "['train', 'val']"):
    get_dataset('ade150', str(tmp_path), 'validation')
  layouts.write_openbench(str(tmp_path), num_images=1, num_classes=3)
  names = tmp_path / 'openbench/class_names.txt'
  names.write_text('0:cat\ndog\n')
  with _raises(ValueError, f'{names}:2: expected a line "idx:name,synonym,...", got \'dog\''):
    get_dataset('openbench', str(tmp_path), 'val')
  os.remove(names)
  with _raises(FileNotFoundError, 'openbench class names: expected file', str(names),
               'python launch/build_openbench.py'):
    get_dataset('openbench', str(tmp_path), 'val')
