"""The decode benchmark runs end to end and its memory columns follow the state sizes."""

import math

import torch

from bench.decode import run


def test_decode_bench_smoke_mode():
    report = run("smoke", torch.device("cpu"), repeats=1, batches=[2])
    table = report.parts[-1]
    rows = {(r[0], r[2]): dict(zip(table.headers, r)) for r in table.rows}
    assert len(rows) == 6  # 3 methods x 2 positions
    for row in rows.values():
        assert math.isfinite(row["ms / token"]) and row["ms / token"] > 0 and row["tokens / s"] > 0
    rec = [rows[("recurrent (Hyena-RTF)", p)]["state MiB"] for p in (16, 200)]
    # tiny preset: per layer 3*64*2 short-conv values + 64*8 RTF state, 2 layers, batch 2, fp32
    assert rec[0] == rec[1] == 2 * 2 * (3 * 64 * 2 + 64 * 8) * 4 / 2**20
    kv = [rows[("attention + KV cache", p)]["state MiB"] for p in (16, 200)]
    assert kv == [2 * 2 * 2 * p * 64 * 4 / 2**20 for p in (16, 200)]  # K and V, 2 layers, batch 2
    assert "| recompute (Hyena-RTF, window l_max)" in report.to_markdown()
