#!/usr/bin/env python3
# `tessera mask --json` output -> the attention harnesses' mask file (i32 num_blocks, i32 nnz,
# u32 indptr[num_blocks + 1], u32 indices[nnz], little-endian):
#   tessera mask --frames 30 --tokens-per-frame 3840 --decay 0.95 --json > h.json
#   python3 mask_to_bin.py h.json hunyuan_F30.bin
import json, struct, sys
m = json.load(open(sys.argv[1]))
with open(sys.argv[2], 'wb') as f:
    f.write(struct.pack('<ii', m['blocks'], len(m['indices'])))
    f.write(struct.pack('<%dI' % len(m['indptr']), *m['indptr']))
    f.write(struct.pack('<%dI' % len(m['indices']), *m['indices']))
print(sys.argv[2], m['blocks'], m['nnz'], m['density'])
