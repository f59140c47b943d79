"""grain pipelines: determinism, resume, host sharding, workers, batch contract; shapes dataset."""
import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from ovsnet_jax.input import IGNORE_LABEL
from ovsnet_jax.input import pipeline, shapes

KW = dict(crop_size=64, scale_range=(0.5, 1.5), max_masks=8)


class IndexReader:
  """Semantic reader whose image k is filled with the value k (its identity survives LSJ)."""

  def __init__(self, n, size=(40, 56)):
    self.n, self.size = n, size

  def __len__(self):
    return self.n

  def __getitem__(self, k):
    sem = np.zeros(self.size, np.int32)
    sem[:, self.size[1] // 2:] = k % 3
    sem[0, 0] = IGNORE_LABEL
    return {'image': np.full(self.size + (3,), k, np.uint8), 'sem_seg': sem, 'file_name': f'{k}.png'}


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_train_batch_contract_and_targets():
  ds = pipeline.train_dataset(shapes.ShapesPanoptic('train', 20, 48), global_batch_size=2, **KW)
  batch = next(iter(ds))
  assert batch['image'].shape == (2, 64, 64, 3) and batch['image'].dtype == np.uint8
  assert batch['mask_index'].shape == (2, 64, 64) and batch['mask_index'].dtype == np.int16
  assert batch['classes'].shape == (2, 8) and batch['valid'].shape == (2, 8)
  masks = pipeline.expand_masks(batch['mask_index'], 8)  # (B, M, H, W)
  nonempty = np.asarray(masks).any((2, 3))
  np.testing.assert_array_equal(nonempty, batch['valid'])  # valid <=> the mask has pixels
  assert batch['valid'][:, 0].all()
  assert set(batch['classes'][batch['valid']].tolist()) <= set(range(len(shapes.class_names('train'))))


def test_resume_mid_epoch_gives_the_same_following_batches():
  reader = shapes.ShapesPanoptic('train', 7, 32)
  ds = pipeline.train_dataset(reader, global_batch_size=2, seed=3, **KW)
  it = iter(ds)
  _take(it, 2)  # 4 of 7 examples: mid-epoch
  state = it.get_state()
  expected = _take(it, 4)  # crosses the epoch boundary
  it2 = iter(pipeline.train_dataset(reader, global_batch_size=2, seed=3, **KW))
  it2.set_state(state)
  _assert_batches_equal(_take(it2, 4), expected)
  other = _take(iter(pipeline.train_dataset(reader, global_batch_size=2, seed=4, **KW)), 1)
  assert not np.array_equal(other[0]['image'], _take(iter(ds), 1)[0]['image'])


def test_epochs_visit_every_example_once_and_reshuffle():
  ds = pipeline.train_dataset(IndexReader(6), global_batch_size=2, color_aug=False, **KW)
  ids = [int(b['image'][i, 0, 0, 0]) for b in _take(iter(ds), 6) for i in range(2)]
  assert sorted(ids[:6]) == list(range(6)) and sorted(ids[6:]) == list(range(6))
  assert ids[:6] != ids[6:]


def test_hosts_get_disjoint_shards_and_a_per_host_batch():
  seen = []
  for host in range(2):
    ds = pipeline.train_dataset(IndexReader(10), global_batch_size=4, color_aug=False,
                                process_index=host, process_count=2, **KW)
    batches = _take(iter(ds), 5)  # 5 * 2 = 10 = two epochs of a 5-example shard
    assert batches[0]['image'].shape[0] == 2
    ids = {int(b['image'][i, 0, 0, 0]) for b in batches for i in range(2)}
    assert ids == set(range(host, 10, 2))
    seen.append(ids)
  assert not seen[0] & seen[1]


def test_semantic_reader_gives_one_target_per_class():
  ds = pipeline.train_dataset(IndexReader(4), global_batch_size=1, color_aug=False, crop_size=64,
                              scale_range=(1.0, 1.0), max_masks=4)
  b = next(iter(ds))
  # Image k: left half class 0, right half class k % 3 -> 1 or 2 targets, ascending class.
  classes = b['classes'][0][b['valid'][0]].tolist()
  assert classes in ([0], [0, 1], [0, 2])
  assert b['mask_index'][0].min() == -1  # the padding / ignore pixel


def test_worker_processes_give_the_same_batches_and_resume():
  reader = shapes.ShapesPanoptic('train', 9, 32)
  ref = _take(iter(pipeline.train_dataset(reader, global_batch_size=2, seed=1, **KW)), 4)
  it = iter(pipeline.train_dataset(reader, global_batch_size=2, seed=1, num_workers=2, **KW))
  got = _take(it, 2)
  state = it.get_state()
  _assert_batches_equal(got, ref[:2])
  it2 = iter(pipeline.train_dataset(reader, global_batch_size=2, seed=1, num_workers=2, **KW))
  it2.set_state(state)
  _assert_batches_equal(_take(it2, 2), ref[2:])


def test_to_device_batch_builds_contract_masks_on_the_mesh():
  mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
  host = next(iter(pipeline.train_dataset(shapes.ShapesPanoptic('train', 4, 32),
                                          global_batch_size=2, **KW)))
  dev = pipeline.to_device_batch(host, mesh)
  assert set(dev) == {'image', 'masks', 'classes', 'valid'}
  assert dev['masks'].shape == (2, 8, 64, 64) and dev['masks'].dtype == np.bool_
  assert dev['image'].dtype == np.float32
  np.testing.assert_array_equal(np.asarray(dev['image']), host['image'].astype(np.float32))
  np.testing.assert_array_equal(np.asarray(dev['masks'])[:, 2], host['mask_index'] == 2)
  assert dev['image'].sharding.spec == jax.sharding.PartitionSpec('data')


def test_eval_dataset_order_padding_and_hosts():
  reader = IndexReader(5, size=(30, 45))
  out = []
  for host in range(2):
    ds = pipeline.eval_dataset(reader, global_batch_size=4, min_size=40, max_size=100,
                               pad_mode='fixed', label_canvas=(32, 48), process_index=host,
                               process_count=2)
    batches = list(ds)
    assert len(batches) == 2  # ceil(5 / 4) = 2 global batches, 2 examples each per host
    out.append(batches)
    for b in batches:
      assert b['image'].shape == (2, 128, 128, 3)  # 'fixed': (max, max) rounded to 32
      assert b['sem_seg'].shape == (2, 32, 48)
      assert (b['sem_seg'][:, 30:] == IGNORE_LABEL).all()
      np.testing.assert_array_equal(b['image_size'], [[40, 60]] * 2)
      np.testing.assert_array_equal(b['orig_size'], [[30, 45]] * 2)
  valid = np.concatenate([b['valid'] for batches in out for b in batches])
  assert valid.sum() == 5
  ids = sorted(int(b['image'][i, 0, 0, 0]) for batches in out for b in batches
               for i in range(2) if b['valid'][i])
  assert ids == [0, 1, 2, 3, 4]
  padding = [b['sem_seg'][i] for batches in out for b in batches for i in range(2) if not b['valid'][i]]
  assert all((p == IGNORE_LABEL).all() for p in padding)


def test_eval_orientation_canvases_and_max_images():
  class TwoWay(IndexReader):
    def __getitem__(self, k):
      ex = super().__getitem__(k)
      if k % 2:
        ex = {'image': ex['image'].transpose(1, 0, 2), 'sem_seg': ex['sem_seg'].T, 'file_name': ''}
      return ex
  ds = pipeline.eval_dataset(TwoWay(6, size=(30, 60)), min_size=40, max_size=100,
                             pad_mode='orientation', max_images=3, pad_value=(1, 2, 3))
  batches = list(ds)
  assert len(batches) == 3
  assert [b['image'].shape[1:3] for b in batches] == [(64, 128), (128, 64), (64, 128)]  # (64, 96), (96, 64)
  np.testing.assert_array_equal(batches[0]['image'][0, 50, 100], [1, 2, 3])
  assert batches[1]['sem_seg'].shape == (1, 128, 128)  # labels padded to the 128 bucket


def test_bad_input_messages():
  with pytest.raises(ValueError, match='the global batch 3 must be divisible by the number of hosts 2'):
    pipeline.train_dataset(IndexReader(4), global_batch_size=3, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="several hosts need pad_mode='fixed'"):
    pipeline.eval_dataset(IndexReader(4), global_batch_size=2, process_index=0, process_count=2)
  with pytest.raises(ValueError, match=r"example 0.png: expected 'segment_ids' and 'segments'"):
    pipeline.example_targets({'image': 0, 'file_name': '0.png'}, 4)
  with pytest.raises(ValueError, match="eval pad_mode: expected one of"):
    pipeline.eval_dataset(IndexReader(4), pad_mode='any')


def test_shapes_dataset_is_deterministic_with_seen_and_unseen_splits(tmp_path):
  train, val = shapes.ShapesPanoptic('train', 30, 32), shapes.ShapesPanoptic('val', 30, 32)
  np.testing.assert_array_equal(train[5]['image'], shapes.ShapesPanoptic('train', 30, 32)[5]['image'])
  assert not np.array_equal(train[5]['image'], shapes.ShapesPanoptic('train', 30, 32, seed=1)[5]['image'])
  assert len(train.class_names) == 8 and len(val.class_names) == 13  # 5 + 3 seen, 3 + 2 held out
  train_cats = {s['category'] for i in range(30) for s in train[i]['segments']}
  assert train_cats <= set(range(8))
  val_names = {val.class_names[s['category']][0] for i in range(30) for s in val[i]['segments']}
  unseen = {n[0] for n, s in zip(val.class_names, shapes.seen_mask()) if not s}
  assert val_names & unseen  # held-out classes appear in val
  seen_names = {n[0] for n in train.class_names}
  assert not unseen & seen_names
  ex = val[3]
  sem = shapes.ShapesSemantic(val)[3]['sem_seg']
  for seg in ex['segments']:
    assert (sem[ex['segment_ids'] == seg['id']] == seg['category']).all()
  shapes.write_class_file(str(tmp_path / 'v.txt'), 'val')
  lines = (tmp_path / 'v.txt').read_text().splitlines()
  assert lines[0] == '0:circle,disc' and len(lines) == 13
  with pytest.raises(ValueError, match="shapes: split must be one of \\('train', 'val'\\), got 'test'"):
    shapes.ShapesPanoptic('test')


def test_shapes_thing_radius_sets_the_size_of_the_things():
  """`radius` (fractions of the side) reaches the renderer: a disc of radius r covers ~pi r^2 pixels."""
  def thing_areas(radius):
    ds = shapes.ShapesPanoptic('val', 40, 64, max_shapes=1, radius=radius)
    areas = {}
    for i in range(len(ds)):
      ex = ds[i]
      thing = [s for s in ex['segments'] if s['category'] < len(shapes.THINGS)]
      if thing and ds.class_names[thing[0]['category']][0] == 'circle':
        areas[i] = int((ex['segment_ids'] == thing[0]['id']).sum())
    return areas
  small, large = thing_areas((0.1, 0.1)), thing_areas((0.3, 0.3))
  assert small and small.keys() == large.keys()  # the same scenes (same draws), only the size changes
  for i in small:
    assert abs(small[i] - np.pi * 6.4 ** 2) < 0.2 * np.pi * 6.4 ** 2, small[i]
    assert abs(large[i] - np.pi * 19.2 ** 2) < 0.1 * np.pi * 19.2 ** 2, large[i]
  default = shapes.ShapesPanoptic('val', 3, 64)
  explicit = shapes.ShapesPanoptic('val', 3, 64, radius=(1 / 7, 1 / 3.5))
  np.testing.assert_array_equal(default[2]['image'], explicit[2]['image'])


def test_train_dataset_from_the_smoke_config():
  from configs import smoke  # pylint: disable=g-import-not-at-top
  config = smoke.get_config('tiny')
  ds = pipeline.train_dataset_from_config(shapes.ShapesPanoptic('train', 16, 64), config)
  b = next(iter(ds))
  assert b['image'].shape == (config.train.batch_size, 64, 64, 3)
  assert b['classes'].shape == (config.train.batch_size, config.data.max_masks)


def _grain_knobs(ds):
  """(read threads, read prefetch, worker processes, per-worker buffer) read off a grain graph.

  grain keeps ReadOptions on its prefetch node and makes one ProcessPrefetchIterDataset (with its
  `_buffer_size`) per worker under mp_prefetch; (0, 0) workers when running in process.
  """
  import grain  # pylint: disable=g-import-not-at-top
  found, workers, seen = [], [], set()

  def walk(node, depth=0):
    if id(node) in seen or depth > 30:
      return
    seen.add(id(node))
    if isinstance(node, (list, tuple)):
      for x in node:
        walk(x, depth + 1)
      return
    if type(node).__name__ == 'ProcessPrefetchIterDataset':
      workers.append(node._buffer_size)  # pylint: disable=protected-access
    for value in getattr(node, '__dict__', {}).values():
      if isinstance(value, grain.ReadOptions):
        found.append((value.num_threads, value.prefetch_buffer_size))
      elif isinstance(value, (list, tuple)) or hasattr(value, '__dict__') and 'grain' in type(value).__module__:
        walk(value, depth + 1)

  walk(ds)
  assert len(found) == 1, found
  return found[0] + (len(workers), workers[0] if workers else 0)


def test_every_data_field_reaches_the_training_pipeline():
  """Flipping each training field of config.data changes the batches or the grain graph."""
  from configs import smoke  # pylint: disable=g-import-not-at-top
  config = smoke.get_config('tiny')
  config.train.batch_size = 4
  # 48 px images zoomed to 128 px and cropped to 32 px: segments get cropped away.
  config.data.crop_size, config.data.scale_range = 32, (4.0, 4.0)
  known = set(pipeline.TRAIN_DATA_FIELDS + pipeline.READER_DATA_FIELDS + pipeline.EVAL_DATA_FIELDS)
  assert set(config.data.keys()) <= known, (f'config.data fields {sorted(set(config.data.keys()) - known)} are '
                                            'not listed in pipeline.*_DATA_FIELDS: wire them and list them')
  reader = shapes.ShapesPanoptic('train', 8, 48)

  def run(**data):
    c = config.copy_and_resolve_references()
    c.data.update(data)
    ds = pipeline.train_dataset_from_config(reader, c)
    knobs = _grain_knobs(ds)
    return (next(iter(ds)) if not c.data.num_workers else None), knobs

  base, knobs = run()
  assert knobs == (config.data.read_threads, config.data.prefetch, 0, 0)
  flips = {'crop_size': 64, 'max_masks': 5, 'scale_range': (1.0, 1.0), 'color_aug': False,
           'keep_cropped_segments': False}
  for field, value in flips.items():
    b, _ = run(**{field: value})
    changed = [k for k in base if b[k].shape != base[k].shape or not np.array_equal(b[k], base[k])]
    assert changed, field
    if field == 'keep_cropped_segments':  # FC-CLIP keeps them: more valid targets, same pixels
      assert base['valid'].sum() > b['valid'].sum() and 'image' not in changed
  assert run(read_threads=3)[1][0] == 3
  assert run(prefetch=9)[1][1] == 9
  assert run(num_workers=2, worker_buffer_size=5)[1][2:] == (2, 5)
  untouched = set(pipeline.TRAIN_DATA_FIELDS) - set(flips) - {'read_threads', 'prefetch', 'num_workers',
                                                              'worker_buffer_size'}
  assert not untouched, untouched


def test_lsj_keeps_cropped_away_segments_as_fcclip():
  """Two corner segments: after a 2x zoom and a 1/4 crop at least one is gone; FC-CLIP keeps it."""
  seg = np.zeros((32, 32), np.int32)
  seg[:8, :8], seg[24:, 24:] = 1, 2
  example = {'image': np.zeros((32, 32, 3), np.uint8), 'segment_ids': seg,
             'segments': [{'id': 1, 'category': 4, 'iscrowd': 0}, {'id': 2, 'category': 6, 'iscrowd': 0},
                          {'id': 3, 'category': 5, 'iscrowd': 1}]}
  for seed in range(6):
    keep = pipeline.TrainTransform(32, (2.0, 2.0), 4)(example, np.random.default_rng(seed))
    drop = pipeline.TrainTransform(32, (2.0, 2.0), 4, keep_cropped_segments=False)(
        example, np.random.default_rng(seed))
    np.testing.assert_array_equal(keep['valid'], [True, True, False, False])  # the crowd one never
    np.testing.assert_array_equal(keep['classes'][:2], [4, 6])
    present = [m for m in range(2) if (keep['mask_index'] == m).any()]
    assert len(present) < 2
    assert drop['valid'].sum() == len(present)
    np.testing.assert_array_equal(drop['classes'][:len(present)], keep['classes'][present])
    np.testing.assert_array_equal(keep['image'], drop['image'])
