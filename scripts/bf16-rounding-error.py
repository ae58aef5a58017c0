#!/usr/bin/env python3
"""How far a decode output can be from the float64 reference in bf16 and fp16 (no GPU, stdlib).

The format's output is out = dtype(dtype(o_rot) * H16): the rotated output rounded to the dtype,
un-rotated, rounded again. This draws Gaussian o_rot rows of 16 channels and prints the relative
Frobenius error of
  - rounding the exact output once, and the format's two roundings, against the exact output;
  - a kernel whose o_rot differs from the reference's by a relative `delta` before the roundings,
    against the reference's rounded output (what the tuner and the GPU tests compare) and against
    the exact output.
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


def main(rows=3000, deltas=(5e-5, 1e-4, 2e-4, 4e-4), seed=0):
    rng = random.Random(seed)
    h = hadamard16()
    unrotate = lambda v: [sum(v[j] * h[j][i] for j in range(16)) for i in range(16)]
    for name, rounded in (('bf16', bf16), ('fp16', f16)):
        exact_sq = once_sq = twice_sq = 0.0
        kernel_sq = {d: [0.0, 0.0] for d in deltas}
        for _ in range(rows):
            o = [rng.gauss(0, 1) for _ in range(16)]
            exact = unrotate(o)
            once = [rounded(v) for v in exact]
            twice = [rounded(v) for v in unrotate([rounded(v) for v in o])]
            exact_sq += sum(v * v for v in exact)
            once_sq += sum((a - b) ** 2 for a, b in zip(once, exact))
            twice_sq += sum((a - b) ** 2 for a, b in zip(twice, exact))
            for d in deltas:
                near = [v * (1 + d * rng.gauss(0, 1)) for v in o]
                kernel = [rounded(v) for v in unrotate([rounded(v) for v in near])]
                kernel_sq[d][0] += sum((a - b) ** 2 for a, b in zip(kernel, twice))
                kernel_sq[d][1] += sum((a - b) ** 2 for a, b in zip(kernel, exact))
        rel = lambda sq: math.sqrt(sq / exact_sq)
        print(f'{name}: rounded once {rel(once_sq):.2e}, the format\'s two roundings '
              f'{rel(twice_sq):.2e} against the exact output')
        for d in deltas:
            print(f'  o_rot off by {d:.0e}: {rel(kernel_sq[d][0]):.2e} against the rounded '
                  f'reference, {rel(kernel_sq[d][1]):.2e} against the exact output')


if __name__ == '__main__':
    main()
