"""Choosing a kernel for each convolution of a run ("auto"): time every layer dense and
sparse, and the layout changes between them, then pick the cheapest assignment.

A run (see :mod:`archs.sparse.conv_conversion`) is cut into segments, each a convolution
with what follows it up to the next convolution (BatchNorm, ReLU, max-pools). Per segment
on the example's activations, interleaved: the original modules on NCHW (``dense``), the
sparse kernel on the tile layout (``numba_conv``), and the layout changes into the tile
layout before it (``to_tiles``) and out of it after (``from_tiles``). A sparse segment
between two others pays no layout change; a lone one pays both. :func:`cheapest_plan`
finds the assignment of least total time (a shortest path over "NCHW" and "tiles" after
each segment), consecutive sparse segments become one chain, and the run so assembled is
timed as a whole against the original modules: it is kept only when at least
:data:`~archs.sparse.common.MEASURED_SPEEDUP_REQUIRED` times faster, so a run never
replays slower than dense by more than the timing noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from archs.sparse.choice import Settings, weight_name
from archs.sparse.common import (DENSE, KERNELS_VERSION, MEASURED_SPEEDUP_REQUIRED, NUMBA_CONV,
                                 LayerChoice, weight_sparsity)
from archs.sparse.conv import ConvSpec, PoolSpec, SparseConvChain, from_tiles, to_tiles
from archs.sparse.timing import timing_key

TO_TILES, FROM_TILES = "to_tiles", "from_tiles"


@dataclass
class Segment:
    """A convolution and the modules after it that its sparse step fuses (BatchNorm, ReLU,
    max-pools, modules that are the identity at inference)."""
    children: list[tuple[str, nn.Module]]
    specs: list[ConvSpec | PoolSpec]

    @property
    def conv(self) -> nn.Conv2d:
        return self.specs[0].conv

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        for _, module in self.children:
            x = module(x)
        return x


def segments(children: list[tuple[str, nn.Module]],
             specs: list[ConvSpec | PoolSpec]) -> list[Segment]:
    """``children`` and ``specs`` of a run cut before each convolution (each convolution
    child is the module of one ConvSpec, in order)."""
    convs = {id(spec.conv) for spec in specs if isinstance(spec, ConvSpec)}
    cut: list[Segment] = []
    for name, module in children:
        if id(module) in convs or not cut:
            cut.append(Segment([], []))
        cut[-1].children.append((name, module))
    spec_groups: list[list] = []
    for spec in specs:
        if isinstance(spec, ConvSpec) or not spec_groups:
            spec_groups.append([])
        spec_groups[-1].append(spec)
    for segment, group in zip(cut, spec_groups, strict=True):
        segment.specs = group
    return cut


def cheapest_plan(seconds: list[dict[str, float]]) -> list[bool]:
    """Which segments run sparse (True) for the least total time.

    ``seconds[i]`` has segment i's ``dense`` and ``numba_conv`` times and its layout
    changes ``to_tiles`` (before it) and ``from_tiles`` (after it). The run takes and gives
    NCHW.
    """
    inf = float("inf")
    # least time so far ending in NCHW / in tiles, and the choices that reach it
    nchw, tiles = (0.0, []), (inf, [])
    previous_from_tiles = inf   # leaving the tile layout costs the change after the last segment in it
    for s in seconds:
        leave = tiles[0] + previous_from_tiles if tiles[0] < inf else inf
        enter = nchw[0] + s[TO_TILES]
        to_nchw = (nchw if nchw[0] <= leave else (leave, tiles[1]))
        to_tiles_ = (tiles if tiles[0] <= enter else (enter, nchw[1]))
        nchw = (to_nchw[0] + s[DENSE], to_nchw[1] + [False])
        tiles = (to_tiles_[0] + s[NUMBA_CONV], to_tiles_[1] + [True])
        previous_from_tiles = s[FROM_TILES]
    leave = tiles[0] + seconds[-1][FROM_TILES]
    return nchw[1] if nchw[0] <= leave else tiles[1]


def _time_segment(segment: Segment, x: torch.Tensor,
                  settings: Settings) -> tuple[dict[str, float], bool]:
    """Seconds of the segment dense, sparse in the tile layout, and of its layout changes."""
    chain = SparseConvChain(segment.specs)
    threads = torch.get_num_threads()
    padding = chain.steps[0].padding
    # ordinary tensors (not inference ones): the layout changes write into them in turn
    with torch.no_grad():
        tiled = to_tiles(x, padding, threads)
        entry = torch.zeros_like(tiled)
        height, width = x.shape[2:]
        result = chain.run_tiles(tiled, height, width).clone()
    key = timing_key(x.device, kernels=KERNELS_VERSION, what="conv_layer",
                     steps=chain.layer_shapes(), input=list(x.shape), dtype=str(x.dtype))
    runs = {DENSE: lambda: segment.dense(x),
            NUMBA_CONV: lambda: chain.run_tiles(tiled, height, width),
            TO_TILES: lambda: to_tiles(x, padding, threads, entry),
            FROM_TILES: lambda: from_tiles(result, x.shape[0], threads)}
    return settings.timing.seconds(key, runs, x.device)


def _assemble(cut: list[Segment], sparse: list[bool], batch: int
              ) -> tuple[list[nn.Module], dict[str, nn.Module | None]]:
    """The modules the run becomes (consecutive sparse segments as one chain, dense below
    ``batch`` images), and the replacement of the run's children that gives them."""
    modules: list[nn.Module] = []
    replacement: dict[str, nn.Module | None] = {}
    index = 0
    while index < len(cut):
        if not sparse[index]:
            modules.extend(module for _, module in cut[index].children)
            index += 1
            continue
        end = index
        while end < len(cut) and sparse[end]:
            end += 1
        group = cut[index:end]
        originals = [module for segment in group for _, module in segment.children]
        chain = SparseConvChain([spec for segment in group for spec in segment.specs],
                                originals, batch)
        modules.append(chain)
        names = [name for segment in group for name, _ in segment.children]
        replacement.update({name: None for name in names})
        replacement[names[0]] = chain
        index = end
    return modules, replacement


def _layer_note(times: dict[str, float], cached: bool) -> str:
    source = "cached timing" if cached else "timed"
    return (f"{source} alone: sparse {times[DENSE] / times[NUMBA_CONV]:.2f}x dense in the tile "
            f"layout, layout changes in {times[TO_TILES] * 1e3:.2f} ms and out "
            f"{times[FROM_TILES] * 1e3:.2f} ms (dense {times[DENSE] * 1e3:.2f} ms)")


def choose_conv_kernels(children: list[tuple[str, nn.Module]], specs: list[ConvSpec | PoolSpec],
                        settings: Settings
                        ) -> tuple[dict[str, nn.Module | None] | None, list[LayerChoice]]:
    """"auto" for one run: the replacement of its children (None: the run stays dense, or
    the example never reached it) and the choice of each convolution."""
    cut = segments(children, specs)

    def choices(kernels: list[str], reasons: list[str]) -> list[LayerChoice]:
        return [LayerChoice(weight_name(settings.module_names[segment.conv]),
                            weight_sparsity(segment.conv.weight), kernel, reason)
                for segment, kernel, reason in zip(cut, kernels, reasons)]

    inputs = [settings.recorded_inputs.get(segment.conv) for segment in cut]
    if any(x is None for x in inputs):
        return None, choices([DENSE] * len(cut),
                             ["the example input never reached this layer"] * len(cut))
    timed = [_time_segment(segment, x, settings) for segment, x in zip(cut, inputs)]
    notes = [_layer_note(times, cached) for times, cached in timed]
    sparse = cheapest_plan([times for times, _ in timed])
    if not any(sparse):
        return None, choices([DENSE] * len(cut), [
            f"{note}: dense is faster, layout changes included" for note in notes])
    x = inputs[0]
    modules, replacement = _assemble(cut, sparse, x.shape[0])

    def assembled() -> torch.Tensor:
        h = x
        for module in modules:
            h = module(h)
        return h

    key = timing_key(x.device, kernels=KERNELS_VERSION, what="conv",
                     steps=[SparseConvChain(s.specs).layer_shapes() for s in cut],
                     sparse=sparse, input=list(x.shape), dtype=str(x.dtype))
    timings, cached = settings.timing.seconds(
        key, {DENSE: lambda: Segment([("", m) for s in cut for _, m in s.children], []).dense(x),
              NUMBA_CONV: assembled}, x.device)
    speedup = timings[DENSE] / timings[NUMBA_CONV]
    source = "cached timing" if cached else "timed"
    if speedup < MEASURED_SPEEDUP_REQUIRED:
        run_note = (f"{source}: the run with its sparse layers ran {speedup:.2f}x dense "
                    f"(needs {MEASURED_SPEEDUP_REQUIRED}x)")
        return None, choices([DENSE] * len(cut), [f"{run_note}; {note}" for note in notes])
    below = f"; batches under {x.shape[0]} images run dense" if x.shape[0] > 1 else ""
    run_note = f"the run ({source}) {speedup:.2f}x dense{below}"
    return replacement, choices(
        [NUMBA_CONV if s else DENSE for s in sparse],
        [f"{note}; {'sparse' if s else 'dense'} is faster here, layout changes included; "
         f"{run_note}" for note, s in zip(notes, sparse)])
