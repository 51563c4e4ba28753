#!/usr/bin/python3
"""Checks a PNG as a reader would: the signature, every chunk's CRC, the header, the image data
inflating to the declared size; then prints how many pixels have each of the given colors.

Usage: check_png.py FILE R,G,B [R,G,B ...]   (exit 1 with the reason if the file is not valid)
"""
import struct
import sys
import zlib

data = open(sys.argv[1], "rb").read()
if data[:8] != b"\x89PNG\r\n\x1a\n":
    sys.exit("not a PNG signature")
at, chunks = 8, {}
while at < len(data):
    length, kind = struct.unpack(">I4s", data[at:at + 8])
    body = data[at + 8:at + 8 + length]
    (crc,) = struct.unpack(">I", data[at + 8 + length:at + 12 + length])
    if zlib.crc32(kind + body) != crc:
        sys.exit(f"bad CRC in chunk {kind!r}")
    chunks.setdefault(kind, b"")
    chunks[kind] += body
    at += 12 + length
width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
if (depth, color, interlace) != (8, 2, 0):
    sys.exit(f"unexpected format: depth {depth}, color type {color}, interlace {interlace}")
raw = zlib.decompress(chunks[b"IDAT"])
if len(raw) != height * (1 + 3 * width):
    sys.exit(f"image data is {len(raw)} bytes, expected {height * (1 + 3 * width)}")
pixels = set()
counts = {c: 0 for c in sys.argv[2:]}
wanted = {tuple(int(v) for v in c.split(",")): c for c in sys.argv[2:]}
for y in range(height):
    row = raw[y * (1 + 3 * width):(y + 1) * (1 + 3 * width)]
    if row[0] != 0:
        sys.exit(f"row {y} uses filter {row[0]}")
    for x in range(width):
        rgb = tuple(row[1 + 3 * x:4 + 3 * x])
        if rgb in wanted:
            counts[wanted[rgb]] += 1
print(f"{width}x{height}", " ".join(f"{c}:{n}" for c, n in counts.items()))
