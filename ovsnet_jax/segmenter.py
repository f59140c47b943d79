"""The Python API: from a checkpoint to pictures in three lines.

  seg = ovsnet_jax.Segmenter.load('fcclip_cocopan.pth')      # or a training workdir (+ config=, clip=)
  result = seg('street.jpg', 'car,person|people,road,sky')   # or a vocabulary name ('ade150'), a file
  result.overlay().show(); result.save('out/')              # overlay.png, labels.png, scores.json

`Segmenter.load` goes through `loading.load_model` (the launchers' path). An FC-CLIP weights file
needs no config: its CLIP variant and number of queries are read from the file (ConvNeXt-L ->
configs/ovsnet_large.py, ConvNeXt-B -> configs/ovsnet_base.py) and FC-CLIP's inference is used
(fusion 'none'); `fusion='gfa'` applies OVSNet's training-free GFA to the same weights.
"""
import dataclasses
import itertools
import json
import os
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ovsnet_jax import atomic_io
from ovsnet_jax import cli
from ovsnet_jax import inference
from ovsnet_jax import loading
from ovsnet_jax import visualize
from ovsnet_jax.text import vocab

ImageLike = Union[str, os.PathLike, np.ndarray, Image.Image]
Vocabulary = Union[str, Sequence[Sequence[str]]]
_FCCLIP_CONFIGS = {'convnext_large_d_320': 'configs/ovsnet_large.py', 'convnext_base_w_320': 'configs/ovsnet_base.py'}


def read_image(image: ImageLike) -> np.ndarray:
  """uint8 (H, W, 3) RGB from a path, a PIL image or an array (gray / RGBA converted)."""
  if isinstance(image, (str, os.PathLike)):
    if not os.path.isfile(image):
      raise FileNotFoundError(f'image {os.fspath(image)!r} does not exist.')
    try:
      with Image.open(image) as f:
        return np.asarray(f.convert('RGB'))
    except OSError as e:
      raise cli.UserError(f'image {os.fspath(image)!r}: not an image PIL can read ({e})') from e
  if isinstance(image, Image.Image):
    return np.asarray(image.convert('RGB'))
  arr = np.asarray(image)
  if arr.ndim == 2:
    arr = np.repeat(arr[..., None], 3, -1)
  if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
    raise ValueError(f'image: expected (H, W, 3) RGB, got shape {arr.shape}')
  return np.ascontiguousarray(arr[..., :3].astype(np.uint8))


def resolve(classes: Vocabulary) -> tuple[list, Optional[str]]:
  """(class names, shipped vocabulary name or None) of a vocabulary string or list."""
  if isinstance(classes, str):
    spec = classes.strip()
    return vocab.resolve_vocabulary(spec), (spec if spec in vocab.VOCABULARIES else None)
  from ovsnet_jax.text import classifier  # pylint: disable=g-import-not-at-top
  return classifier.check_class_names(classes), None


@dataclasses.dataclass
class Result:
  """One image's segmentation: labels (H, W) int32 class indices into `class_names`."""
  image: np.ndarray
  labels: np.ndarray
  confidence: np.ndarray
  class_scores: np.ndarray
  class_names: list
  seen: np.ndarray
  colors: np.ndarray

  @property
  def names(self) -> list:
    return [c[0] for c in self.class_names]

  def areas(self) -> dict:
    """{class name: pixel share in %} of the classes present, largest first."""
    ids, counts = np.unique(self.labels, return_counts=True)
    order = np.argsort(-counts)
    return {self.names[ids[i]]: float(100.0 * counts[i] / self.labels.size) for i in order}

  def scores(self) -> dict:
    """JSON-ready: per class its max score over the image, pixel share and seen flag, plus present classes."""
    area = self.areas()
    return {'classes': [{'name': n, 'synonyms': list(c), 'score': float(s), 'area_percent': area.get(n, 0.0),
                         'seen': bool(v)} for n, c, s, v in zip(self.names, self.class_names, self.class_scores,
                                                                self.seen)],
            'present': list(area), 'height': int(self.labels.shape[0]), 'width': int(self.labels.shape[1])}

  def overlay(self, alpha: float = 0.5, legend: bool = True, segment_labels: bool = False) -> Image.Image:
    """The colour overlay (with a legend, optionally names on the segments) as a PIL image."""
    return visualize.render(self.image, self.labels, self.names, self.colors, alpha, segment_labels, legend)

  def label_image(self) -> Image.Image:
    """Palette-indexed PNG of the labels (pixel value = class index)."""
    return visualize.label_png(self.labels, self.colors)

  def save(self, path: str, stem: str = '', alpha: float = 0.5, segment_labels: bool = False) -> dict:
    """Writes `<stem>overlay.png`, `<stem>labels.png` (or .npy past 256 classes) and `<stem>scores.json`
    into the folder `path`, or only the overlay when `path` ends in .png/.jpg. Returns {kind: path}."""
    if os.path.splitext(path)[1].lower() in ('.png', '.jpg', '.jpeg'):
      _write_image(path, self.overlay(alpha, segment_labels=segment_labels))
      return {'overlay': path}
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      raise atomic_io.OutputError(f'{path}: cannot create the output folder ({e.strerror})') from e
    out = {'overlay': os.path.join(path, f'{stem}overlay.png'), 'scores': os.path.join(path, f'{stem}scores.json')}
    _write_image(out['overlay'], self.overlay(alpha, segment_labels=segment_labels))
    if len(self.class_names) <= 256:
      out['labels'] = os.path.join(path, f'{stem}labels.png')
      _write_image(out['labels'], self.label_image())
    else:
      out['labels'] = os.path.join(path, f'{stem}labels.npy')
      atomic_io.write_bytes(_npy_bytes(self.labels.astype(np.int32)), out['labels'])
    atomic_io.write_json(self.scores(), out['scores'], indent=1)
    return out


def _write_image(path: str, image: Image.Image) -> None:
  fmt = 'JPEG' if path.lower().endswith(('.jpg', '.jpeg')) else 'PNG'
  with atomic_io.open_atomic(path, 'wb') as f:
    image.save(f, format=fmt)


def _npy_bytes(array: np.ndarray) -> bytes:
  import io  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  np.save(buf, array)
  return buf.getvalue()


class Segmenter:
  """A loaded OVSNet / FC-CLIP model that segments images with any vocabulary."""

  def __init__(self, loaded: loading.Loaded, min_size: int = 800, max_size: int = 1333, bucket: int = 128,
               batch_size: int = 1, train_classes: Optional[Sequence[Sequence[str]]] = None):
    self.loaded, self.min_size, self.max_size = loaded, min_size, max_size
    self.bucket, self.batch_size, self.train_classes = bucket, batch_size, train_classes
    self._text: dict = {}

  @classmethod
  def load(cls, checkpoint: str = '', clip: str = '', config: Any = None, fusion: Optional[str] = None,
           text_cache: str = '', **kwargs) -> 'Segmenter':
    """A Segmenter from a checkpoint (see `loading`); `config` defaults to the FC-CLIP file's own layout,
    else configs/smoke.py. `fusion`: 'none' (FC-CLIP) or 'gfa' (training-free GFA)."""
    if config is None:
      config = _config_of_file(checkpoint) if checkpoint and os.path.isfile(checkpoint) else 'configs/smoke.py'
    return cls(loading.load_model(config, checkpoint, clip, text_cache, fusion), **kwargs)

  @property
  def config(self):
    return self.loaded.config

  def text(self, class_names: list) -> dict:
    """The text classifier of a vocabulary (memoised per vocabulary, and cached on disk)."""
    key = json.dumps(class_names)
    if key not in self._text:
      self._text = {key: self.loaded.classify(class_names)}  # keep one: vocabularies can be large
    return self._text[key]

  def __call__(self, image: ImageLike, classes: Vocabulary) -> Result:
    return self.segment_many([image], classes)[0]

  def segment_many(self, images: Sequence[ImageLike], classes: Vocabulary, on_done=None) -> list[Result]:
    """Segments images of any sizes with one vocabulary, batched by size bucket."""
    class_names, name = resolve(classes)
    colors = visualize.palette(len(class_names), name)
    seen = vocab.seen_mask(class_names, self.train_classes)
    arrays = [read_image(x) for x in images]
    raw = inference.segment_batch(self.loaded.params, arrays, self.text(class_names), seen, model=self.loaded.model,
                                  min_size=self.min_size, max_size=self.max_size, bucket=self.bucket,
                                  batch_size=self.batch_size, on_done=on_done)
    return [Result(a, r['labels'], r['confidence'], r['class_scores'], class_names, seen, colors)
            for a, r in zip(arrays, raw)]


def video_frames(path: str, every: int = 1) -> Iterator[Tuple[str, np.ndarray]]:
  """Streams (`<video stem>_<frame index>`, uint8 (H, W, 3)) for every `every`-th frame of a video.

  Frames are decoded one at a time by imageio (any format it reads: mp4 etc. with imageio-ffmpeg,
  GIF with Pillow), so a long video never sits in memory.
  """
  try:
    import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise cli.UserError('reading a video needs imageio (pip install "imageio[ffmpeg]")') from e
  if every < 1:
    raise cli.UserError(f'every: expected a positive integer, got {every}')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'video {path!r} does not exist.')
  stem = os.path.splitext(os.path.basename(path))[0]

  def frames():  # checks above run at the call, decoding only when iterated
    try:
      for i, frame in enumerate(iio.imiter(path)):
        if i % every == 0:
          frame = np.asarray(frame)
          if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=-1)
          yield f'{stem}_{i:06d}', np.ascontiguousarray(frame[..., :3]).astype(np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # Pillow reports a corrupt GIF as SyntaxError
      raise cli.UserError(f'video {path!r}: cannot decode it ({e})') from e
  return frames()


def segment_to_folder(seg: 'Segmenter', items: Iterable[Tuple[str, ImageLike]], classes: Vocabulary, out: str,
                      group: int = 32, on_done: Optional[Callable[[int], Any]] = None, **save_kwargs) -> int:
  """Segments (stem, image) pairs into `out` (`Result.save` files per image, `classes.json`); returns the count.

  `items` is consumed `group` at a time (a folder or a video stream never sits in memory whole);
  each group is batched by size bucket. `save_kwargs` go to `Result.save` (alpha, segment_labels).
  """
  class_names, _ = resolve(classes)
  os.makedirs(out, exist_ok=True)
  atomic_io.write_json({'classes': class_names, 'names': [c[0] for c in class_names]},
                       os.path.join(out, 'classes.json'), indent=1)
  seg.text(class_names)  # encode first (its own progress bar)
  items, count = iter(items), 0
  while part := list(itertools.islice(items, group)):
    results = seg.segment_many([x for _, x in part], classes, on_done=on_done)
    for (stem, _), result in zip(part, results):
      result.save(out, stem=f'{stem}_', **save_kwargs)
    count += len(part)
  return count


def _config_of_file(path: str):
  """The config matching an FC-CLIP weights file (CLIP variant, queries), FC-CLIP's inference."""
  from ovsnet_jax.convert import fcclip_checkpoint  # pylint: disable=g-import-not-at-top
  state = fcclip_checkpoint.read_state(path)
  variant, queries = fcclip_checkpoint.infer_layout({k: v.shape for k, v in state.items()}, path)
  if variant not in _FCCLIP_CONFIGS:
    raise cli.UserError(f'{path!r}: CLIP {variant!r} has no default config; pass config=...')
  config = loading.load_config(_FCCLIP_CONFIGS[variant] + ':fusion=none,pc=false')
  config.model.decoder.num_queries = queries
  return config
