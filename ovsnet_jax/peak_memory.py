"""Where a compiled program's peak temporary memory goes: the buffers live at the peak, by name scope.

`memory_analysis()` gives one number, the temporary allocation. XLA's dump of a compiled module
(`--xla_dump_to=DIR`, honoured by libtpu's deviceless AOT compiles as by the CPU and GPU compilers)
holds what that number is made of:

- `<module>.after_optimizations-buffer-assignment.txt`: every allocation (`allocation N: size S,
  [color C,] preallocated-temp:` ...) and the HLO values placed in it (`value: <id name @pos>
  (size=..,offset=..): shape`);
- `<module>.after_optimizations-live-range.txt`: each value's live range in the module's schedule
  (`name{shape index}:start-end`);
- `<module>.after_optimizations-buffer-assignment-values.txt`: the instruction that defines each
  value, with its `op_name` metadata (the JAX / Flax name scope it was traced under).

The peak is the schedule position where the live temporary values of the default memory space
(colour 0: HBM on TPU) sum to the most; the report lists the values live there, largest first, and
sums them by name scope. Only the module's temporaries are counted (parameters, outputs and
constants are the arguments / outputs of `memory_analysis()`).
"""
import collections
import dataclasses
import glob
import os
import re
from typing import Optional

_ALLOCATION = re.compile(r'^allocation (\d+): size (\d+)(.*)$')
_VALUE = re.compile(r'^ value: <(\d+) (\S+) @(\d+)> \(size=(\d+),offset=(\d+)\): (.*)$')
_RANGE = re.compile(r'^\s+(\S+?)(\{[^}]*\})?:(\d+)-(\d+)$')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_COLOR = re.compile(r'color (\d+)')


@dataclasses.dataclass(frozen=True)
class Buffer:
  name: str        # the HLO value: defining instruction and, for tuple elements, its shape index
  size: int        # bytes
  offset: int      # in its allocation
  shape: str
  op_name: str     # the defining instruction's op_name metadata ('' if none)
  live: tuple[int, int]  # schedule positions, inclusive


def assignments(dump_dir: str) -> set[str]:
  """The buffer-assignment files now in `dump_dir` (to tell a later compile's from earlier ones)."""
  return set(glob.glob(os.path.join(dump_dir, '*after_optimizations-buffer-assignment.txt')))


def module_files(dump_dir: str, module_substring: str = '', exclude: frozenset = frozenset()) -> dict[str, str]:
  """The three dump files of the largest buffer assignment in `dump_dir` whose module name contains
  `module_substring` (and that is not in `exclude`). Raises a ValueError naming the directory when
  one is missing."""
  found = [p for p in assignments(dump_dir) - set(exclude) if module_substring in os.path.basename(p)]
  if not found:
    raise ValueError(f'peak_memory: no *after_optimizations-buffer-assignment.txt for module '
                     f'{module_substring!r} in {dump_dir} (compile with XLA_FLAGS=--xla_dump_to={dump_dir})')
  assignment = max(found, key=os.path.getsize)
  stem = assignment[:-len('-buffer-assignment.txt')]
  files = {'assignment': assignment, 'values': stem + '-buffer-assignment-values.txt',
           'live_range': stem + '-live-range.txt'}
  for key, path in files.items():
    if not os.path.isfile(path):
      raise ValueError(f'peak_memory: {path} missing ({key} of the dump in {dump_dir})')
  return files


def _key(name: str) -> str:
  return name if '{' in name else name + '{}'


def temp_buffers(files: dict[str, str]) -> tuple[list[Buffer], int]:
  """Every value of the default-memory-space temporary allocations, with its live range and op_name,
  and the bytes of those allocations."""
  temp_values = []  # (name, size, offset, shape)
  in_temp, base, allocated = False, 0, 0
  with open(files['assignment']) as f:
    for line in f:
      m = _ALLOCATION.match(line)
      if m:
        attrs = m.group(3)
        color = _COLOR.search(attrs)
        in_temp = 'preallocated-temp' in attrs and (color is None or color.group(1) == '0')
        base = int(m.group(1)) << 48  # offsets of different allocations never coincide
        allocated += int(m.group(2)) if in_temp else 0
        continue
      if line.startswith('Total bytes used') or line.startswith('Used values'):
        break
      v = _VALUE.match(line)
      if v and in_temp:
        temp_values.append((v.group(2), int(v.group(4)), int(v.group(5)) + base, v.group(6).strip()))
  ranges = {}
  with open(files['live_range']) as f:
    for line in f:
      r = _RANGE.match(line)
      if r:
        ranges[r.group(1) + (r.group(2) or '{}')] = (int(r.group(3)), int(r.group(4)))
  wanted = {_key(n).split('{')[0] for n, _, _, _ in temp_values}
  op_names = {}
  with open(files['values']) as f:
    current = None
    for line in f:
      if line.startswith('<'):
        name = line.split()[1]
        current = name.split('{')[0] if name.split('{')[0] in wanted else None
      elif current and line.lstrip().startswith('from instruction:'):
        m = _OP_NAME.search(line)
        op_names.setdefault(current, m.group(1) if m else '')
  out = []
  for name, size, offset, shape in temp_values:
    live = ranges.get(_key(name))
    if live is None:
      continue  # not scheduled in the flattened module (e.g. a value of an uncalled computation)
    out.append(Buffer(name, size, offset, shape, op_names.get(name.split('{')[0], ''), live))
  return out, allocated


def _slots(buffers: list[Buffer]) -> list[tuple[int, int, int]]:
  """(start, end, bytes) of the physical memory in use: values placed at the same offset with
  overlapping live ranges (in-place updates, a sort's output over its operand, tuple elements) are
  one piece of memory, counted once at the largest of their sizes."""
  slots = []
  by_offset = collections.defaultdict(list)
  for b in buffers:
    by_offset[b.offset].append(b)
  for group in by_offset.values():
    group.sort(key=lambda b: b.live[0])
    start, end, size = group[0].live[0], group[0].live[1], group[0].size
    for b in group[1:]:
      if b.live[0] <= end:
        end, size = max(end, b.live[1]), max(size, b.size)
      else:
        slots.append((start, end, size))
        start, end, size = b.live[0], b.live[1], b.size
    slots.append((start, end, size))
  return slots


def peak(buffers: list[Buffer]) -> tuple[int, int, list[Buffer]]:
  """(schedule position, live bytes there, the buffers live there, largest first) at the maximum."""
  if not buffers:
    return 0, 0, []
  delta = collections.Counter()
  for start, end, size in _slots(buffers):
    delta[start] += size
    delta[end + 1] -= size
  best_t, best, running = 0, -1, 0
  for t in sorted(delta):
    running += delta[t]
    if running > best:
      best_t, best = t, running
  live, seen = [], set()
  for b in sorted((b for b in buffers if b.live[0] <= best_t <= b.live[1]), key=lambda b: -b.size):
    if b.offset not in seen:  # one entry per piece of memory, as counted
      seen.add(b.offset)
      live.append(b)
  return best_t, best, live


def scope(op_name: str, depth: int) -> str:
  """The first `depth` components of an op_name's name scope, transforms (jvp(...), transpose(...))
  unwrapped and marked: 'transpose(jvp(OVSNet))/pixel_decoder/...' -> 'backward: OVSNet/pixel_decoder'."""
  if not op_name:
    return '(no op_name)'
  parts = op_name.split('/')
  if parts and parts[0].startswith('jit('):
    parts = parts[1:]
  backward = any(p.startswith('transpose(') for p in parts)
  clean = [re.sub(r'^(?:\w+\()+([^()]*)\)+$', r'\1', p) for p in parts]
  return ('backward: ' if backward else '') + '/'.join(clean[:depth])


def report(dump_dir: str, module_substring: str = '', top: int = 15, depth: int = 3,
           exclude: frozenset = frozenset()) -> dict:
  """{'position', 'live_bytes', 'allocated_bytes', 'top': [Buffer], 'by_scope': [(scope, bytes)],
  'files'} at the peak of the largest module in `dump_dir` (see `module_files`). `allocated_bytes`
  is the size of the temporary allocations: what the live values do not fill is fragmentation or
  scratch that XLA reserves for its kernels."""
  files = module_files(dump_dir, module_substring, exclude)
  buffers, allocated = temp_buffers(files)
  position, live_bytes, live = peak(buffers)
  by_scope = collections.Counter()
  for b in live:
    by_scope[scope(b.op_name, depth)] += b.size
  return {'position': position, 'live_bytes': live_bytes, 'allocated_bytes': allocated, 'top': live[:top],
          'by_scope': by_scope.most_common(top), 'files': files}


def format_report(rep: dict, total_temp: Optional[int] = None) -> str:
  """The report as text; `total_temp`: `memory_analysis()`'s temporary bytes, for comparison."""
  gib = 1024 ** 3
  head = (f'peak temporary memory: {rep["live_bytes"] / gib:.3f} GiB of values live at schedule position '
          f'{rep["position"]}, in {rep["allocated_bytes"] / gib:.3f} GiB of temporary HBM allocations')
  if total_temp:
    head += f' ({total_temp / gib:.3f} GiB temporary in memory_analysis, other memory spaces included)'
  lines = [head, '  by name scope:']
  lines += [f'    {b / gib:8.3f} GiB  {s}' for s, b in rep['by_scope']]
  lines.append('  largest buffers:')
  lines += [f'    {b.size / gib:8.3f} GiB  {b.shape}  {b.op_name or b.name}' for b in rep['top']]
  return '\n'.join(lines)
