"""peak_memory: the buffers live at a compiled program's peak, read from XLA's dump of it."""
import json
import os
import subprocess
import sys

import pytest

from ovsnet_jax import peak_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A program whose peak is known by hand: per v5e chip a (1024, 8192) float32 block is sorted along
# its rows. XLA's sort carries its keys with an iota of indices, so at the sort three 32 MiB arrays
# are live at once (the values, the u32 iota it sorts in place, and the s32 indices), inside the
# 'sortit' name scope.
_PROGRAM = r'''
import json, os, sys
sys.path.insert(0, {root!r})
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from ovsnet_jax import aot, peak_memory
devices, _ = aot.topology_devices('v5e:2x2')
mesh = jax.sharding.Mesh(devices, ('data',))
def loss(w, x):
  with jax.named_scope('wide'):
    h = jnp.tanh(x @ w)  # (1024, 8192) per chip
  with jax.named_scope('sortit'):
    h = jnp.sort(h, axis=-1)
  return (h ** 2).sum()
step = jax.jit(jax.grad(loss), in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))))
compiled = step.lower(jax.ShapeDtypeStruct((1024, 8192), jnp.float32),
                      jax.ShapeDtypeStruct((4096, 1024), jnp.float32)).compile()
rep = peak_memory.report(os.environ['DUMP'], 'jit_loss')
print(json.dumps({{'temp': compiled.memory_analysis().temp_size_in_bytes, 'live': rep['live_bytes'],
                  'allocated': rep['allocated_bytes'], 'scopes': rep['by_scope'],
                  'top': [[b.size, b.shape, b.op_name] for b in rep['top']],
                  'text': peak_memory.format_report(rep)}}))
'''


def test_peak_of_a_sort_on_v5e_is_its_three_arrays(tmp_path):
  dump = str(tmp_path / 'dump')
  env = {**os.environ, 'XLA_FLAGS': f'--xla_dump_to={dump}', 'DUMP': dump, 'JAX_PLATFORMS': 'cpu'}
  out = subprocess.run([sys.executable, '-c', _PROGRAM.format(root=ROOT)], env=env, capture_output=True,
                       text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  rep = json.loads(out.stdout.strip().splitlines()[-1])
  block = 1024 * 8192 * 4
  # Values, iota, indices: each once, though the sort works in place; plus the sort's tuple of the
  # three (one 512-byte TPU tile of pointers).
  assert rep['live'] == 3 * block + 512
  assert rep['live'] <= rep['allocated'] <= rep['temp']
  assert [t[0] for t in rep['top'][:3]] == [block] * 3
  assert all('sortit' in t[2] for t in rep['top'][:3])
  assert rep['scopes'][0][0].startswith('sortit/') and sum(b for _, b in rep['scopes']) == rep['live']
  assert rep['text'].startswith('peak temporary memory: 0.094 GiB of values live at schedule position')


def test_slots_count_memory_shared_in_place_once():
  b = lambda name, size, offset, live: peak_memory.Buffer(name, size, offset, 'f32[]', 'jit(f)/x', live)
  buffers = [b('a', 100, 0, (0, 5)), b('a_updated', 100, 0, (5, 9)),  # in place: one piece of memory
             b('c', 50, 100, (2, 6)), b('d', 70, 100, (8, 9)),       # same place, later: reused
             b('e', 30, 200, (3, 4))]
  position, live, listed = peak_memory.peak(buffers)
  assert (position, live) == (3, 100 + 50 + 30)
  assert [x.name for x in listed] == ['a', 'c', 'e']
  assert peak_memory.peak([]) == (0, 0, [])


def test_scope_unwraps_transforms_and_marks_the_backward():
  assert peak_memory.scope('jit(step)/jvp(OVSNet)/pixel_decoder/layer_0/dot_general', 2) == 'OVSNet/pixel_decoder'
  assert (peak_memory.scope('jit(step)/transpose(jvp(OVSNet))/mask_decoder/layers/mul', 3)
          == 'backward: OVSNet/mask_decoder/layers')
  assert peak_memory.scope('', 3) == '(no op_name)'


def test_missing_dump_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"no \*after_optimizations-buffer-assignment.txt for module 'jit_x' in "
                                       + str(tmp_path).replace('/', r'\/') + r' \(compile with XLA_FLAGS'):
    peak_memory.report(str(tmp_path), 'jit_x')
  (tmp_path / 'm.jit_x.after_optimizations-buffer-assignment.txt').write_text('BufferAssignment:\n')
  with pytest.raises(ValueError, match=r'm.jit_x.after_optimizations-buffer-assignment-values.txt missing'):
    peak_memory.report(str(tmp_path), 'jit_x')
