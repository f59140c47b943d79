r"""Web demo (gradio): upload an image, type a vocabulary, see the overlay, its legend and the class list.

  python launch/app.py                                   # the smoke model (configs/smoke.py + /tmp/ovsnet_smoke)
  python launch/app.py --checkpoint=fcclip_cocopan.pth    # FC-CLIP's released ConvNeXt-L weights
  python launch/app.py --config=configs/ovsnet_base.py --clip=CLIP_DIR --checkpoint=WORKDIR --port=7860

Then open http://127.0.0.1:7860. Served on 127.0.0.1 unless --host is given. The same function is
an HTTP API endpoint '/segment' (gradio_client: Client(url).predict(handle_file(img), 'cat,dog',
api_name='/segment') -> (overlay file, class table)).
"""
import os
import sys

from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` importable

# pylint: disable=g-import-not-at-top,wrong-import-position
from ovsnet_jax import cli
from ovsnet_jax import segmenter

SMOKE_WORKDIR = '/tmp/ovsnet_smoke'  # launch/train.py --config=configs/smoke.py --workdir=... (README)
EXAMPLE_CLASSES = 'sky,tree,grass,person|people,building,road,car'

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config (default: the weights file\'s layout, '
                                          'else configs/smoke.py).', lock_config=False)
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Training workdir or FC-CLIP .pth (default: the smoke workdir '
                                  f'{SMOKE_WORKDIR} with configs/smoke.py, if it exists).')
_CLIP = flags.DEFINE_string('clip', '', "Converted CLIP directory; '' -> config / the weights file's own.")
_FUSION = flags.DEFINE_enum('fusion', None, ['none', 'gfa'], 'Override model.fusion.')
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Interface to serve on.')
_PORT = flags.DEFINE_integer('port', 7860, 'Port.')
_MIN_SIZE = flags.DEFINE_integer('min_size', 800, 'Shortest-edge resize.')
_MAX_SIZE = flags.DEFINE_integer('max_size', 1333, 'Longest-edge cap.')
_TEXT_CACHE = flags.DEFINE_string('text_cache', '', "Text cache dir; '' -> user cache, 'none' -> off.")
_EXAMPLE = flags.DEFINE_string('example', '', 'An image shown and segmented when the page opens.')
_CLASSES = flags.DEFINE_string('classes', EXAMPLE_CLASSES, 'The vocabulary the text box starts with.')


def segment_fn(seg: segmenter.Segmenter):
  """(image array, vocabulary text, names on segments) -> (overlay image, class table rows)."""
  import gradio as gr

  def run(image, classes: str, segment_labels: bool = False):
    if image is None:
      raise gr.Error('Upload an image first.')
    try:
      result = seg(image, classes)
    except ValueError as e:  # vocabulary typos, bad images: shown in the page, not a traceback
      raise gr.Error(str(e)) from e
    area = result.areas()
    rows = [[name, round(share, 2), round(float(result.class_scores[result.names.index(name)]), 4),
             'seen' if result.seen[result.names.index(name)] else 'unseen'] for name, share in area.items()]
    return result.overlay(segment_labels=segment_labels), rows
  return run


def build_app(seg: segmenter.Segmenter, title: str = 'OVSNet open-vocabulary segmentation', note: str = '',
              example: str = '', default_classes: str = EXAMPLE_CLASSES):
  """The gradio Blocks app around a Segmenter; `example`: an image shown, and segmented, on page load."""
  import gradio as gr
  with gr.Blocks(title=title) as app:
    gr.Markdown(f'## {title}\n{note}\nClasses: `,` between classes, `|` between synonyms (e.g. '
                '`dog|puppy`); a single name is a shipped vocabulary (`ade150`, `coco_panoptic_133`, '
                '`pc59`, ...).')
    with gr.Row():
      with gr.Column():
        image = gr.Image(value=example or None, type='numpy', label='image')
        classes = gr.Textbox(value=default_classes, label='vocabulary')
        labels = gr.Checkbox(value=False, label='names on segments')
        button = gr.Button('Segment', variant='primary')
      with gr.Column():
        overlay = gr.Image(type='pil', label='segmentation (legend: class, pixel share)', format='png')
        table = gr.Dataframe(headers=['class', 'area %', 'score', 'seen/unseen'], label='classes found',
                             interactive=False)
    button.click(segment_fn(seg), [image, classes, labels], [overlay, table], api_name='segment')
    if example:
      app.load(segment_fn(seg), [image, classes, labels], [overlay, table], api_name=False)
  return app


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logs()
  checkpoint, config, note = _CHECKPOINT.value, _CONFIG.value, ''
  if checkpoint is None:
    checkpoint = SMOKE_WORKDIR if os.path.isdir(os.path.join(SMOKE_WORKDIR, 'checkpoints')) else ''
    config = config or 'configs/smoke.py'
    note = (f'Model: the smoke model ({SMOKE_WORKDIR}: the shapes world, its CLIP pretrained on the '
            "world's captions)." if checkpoint else
            f'Model: configs/smoke.py with a **random decoder** (train it: `python launch/train.py '
            f'--config=configs/smoke.py --workdir={SMOKE_WORKDIR}`); the labels are meaningless.')
  seg = segmenter.Segmenter.load(checkpoint, _CLIP.value, config, _FUSION.value, _TEXT_CACHE.value,
                                 min_size=_MIN_SIZE.value, max_size=_MAX_SIZE.value, bucket=128)
  note = note or f'Model: {seg.loaded.source} ({seg.config.model.clip_variant}, fusion {seg.config.model.fusion}).'
  if _EXAMPLE.value and not os.path.isfile(_EXAMPLE.value):
    raise cli.UserError(f'--example {_EXAMPLE.value!r} does not exist.')
  build_app(seg, note=note, example=_EXAMPLE.value, default_classes=_CLASSES.value).launch(server_name=_HOST.value, server_port=_PORT.value)


if __name__ == '__main__':
  cli.run(main)
