"""Prompt templates that turn a class name into sentences for the CLIP text encoder.

``VILD_TEMPLATES`` are the 14 ViLD prompts that FC-CLIP uses (``VILD_PROMPT`` in
bytedance/fc-clip: fcclip/fcclip.py), in the same order. ``{}`` is replaced by a class name.
"""
from typing import List, Sequence, Tuple

VILD_TEMPLATES: Tuple[str, ...] = (
    'a photo of a {}.',
    'This is a photo of a {}',
    'There is a {} in the scene',
    'There is the {} in the scene',
    'a photo of a {} in the scene',
    'a photo of a small {}.',
    'a photo of a medium {}.',
    'a photo of a large {}.',
    'This is a photo of a small {}.',
    'This is a photo of a medium {}.',
    'This is a photo of a large {}.',
    'There is a small {} in the scene.',
    'There is a medium {} in the scene.',
    'There is a large {} in the scene.',
)

TEMPLATE_SETS = {'vild': VILD_TEMPLATES}


def get_templates(name: str) -> Tuple[str, ...]:
  """Templates by config name (``config.text.templates``), e.g. 'vild'."""
  if name not in TEMPLATE_SETS:
    raise ValueError(f'config.text.templates: unknown template set {name!r}; '
                     f'expected one of {sorted(TEMPLATE_SETS)}')
  return TEMPLATE_SETS[name]


def fill_templates(name: str, templates: Sequence[str]) -> List[str]:
  """The prompts for one class name: one per template, in template order."""
  return [t.format(name) for t in templates]
