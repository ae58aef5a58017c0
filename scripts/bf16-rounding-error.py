#!/usr/bin/env python3
"""How far a decode output can be from the float64 reference in bf16 and fp16 (no GPU, stdlib).

The format is fp16 from the rotation on: out = dtype(fp16(fp16(o_rot) * H16)), so a bf16 output is
the fp16 output converted once. This draws Gaussian o_rot rows of 16 channels, with x the exact
un-rotation of fp16(o_rot) (what reference::decodeQuantized returns as `unconverted`), and prints
  - the output's own rounding: the reference's outputs against x;
  - for a kernel whose o_rot is off by a relative `delta` before the roundings: its relative
    Frobenius error against the reference's outputs (what fp16 outputs are held to), and its
    error beyond the rounding, sqrt(max(0, |out - x|^2 - |ref - x|^2)) / |x| (what bf16 outputs
    are held to: reference::decodeOutputError).
"""
import math
import random
import struct


def bf16(x):
    bits = struct.unpack('<I', struct.pack('<f', x))[0]
    bits = ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) << 16  # round to nearest even
    return struct.unpack('<f', struct.pack('<I', bits & 0xffffffff))[0]


def f16(x):
    return struct.unpack('<e', struct.pack('<e', x))[0]


def hadamard16():
    h = [[1.0]]
    for _ in range(4):
        h = [r + r for r in h] + [r + [-v for v in r] for r in h]
    return [[v / 4 for v in r] for r in h]


def main(rows=3000, deltas=(5e-5, 1e-4, 2e-4, 4e-4, 1e-3), seed=0):
    rng = random.Random(seed)
    h = hadamard16()
    unrotate = lambda v: [sum(v[j] * h[j][i] for j in range(16)) for i in range(16)]
    for name, convert in (('bf16', lambda v: bf16(f16(v))), ('fp16', f16)):
        norm_sq = rounding_sq = 0.0
        against = {d: 0.0 for d in deltas}
        beyond = {d: 0.0 for d in deltas}
        for _ in range(rows):
            o = [rng.gauss(0, 1) for _ in range(16)]
            x = unrotate([f16(v) for v in o])
            ref = [convert(v) for v in x]
            norm_sq += sum(v * v for v in x)
            ref_sq = sum((a - b) ** 2 for a, b in zip(ref, x))
            rounding_sq += ref_sq
            for d in deltas:
                near = [v * (1 + d * rng.gauss(0, 1)) for v in o]
                out = [convert(v) for v in unrotate([f16(v) for v in near])]
                against[d] += sum((a - b) ** 2 for a, b in zip(out, ref))
                beyond[d] += sum((a - b) ** 2 for a, b in zip(out, x)) - ref_sq
        rel = lambda sq: math.sqrt(max(0.0, sq) / norm_sq)
        print(f'{name}: the output\'s own rounding {rel(rounding_sq):.2e} from x')
        for d in deltas:
            print(f'  o_rot off by {d:.0e}: {rel(against[d]):.2e} against the reference\'s '
                  f'outputs, {rel(beyond[d]):.2e} beyond the rounding')


if __name__ == '__main__':
    main()
