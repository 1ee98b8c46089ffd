"""Inference speed at the paper's widths: encode and decode through the Python API.

    python bench/infer_throughput.py [--resolutions 32,64] [--batches 1,32]

`Pioneer.encode` / `Pioneer.decode` (torch.inference_mode, what the CLI and the Serve
deployments call) on the paper's architecture (512 channels up to 32 px, 256 at 64 px),
untrained weights (speed does not depend on them). Rows, side by side:

    fp32-nchw          fp32, NCHW
    fp32-cl            fp32, channels_last (the API's layout)
    bf16-cl            bf16 autocast, channels_last (precision="auto" on bf16 hardware)
    bf16-cl-compiled   the same with torch.compile on both networks

Each row prints img/s at batch 1 and 32, achieved GFLOP/s (FlopCounterMode on the same
call), its share of the fastest 3x3 conv forward among the network's shapes at that
precision and layout (measured in this same run), and its ratio to the fp32 NCHW row.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_throughput import conv_peak, paper_config, print_peaks, save  # noqa: E402

from pioneer.api import Pioneer  # noqa: E402
from pioneer.config import PAPER_CHANNELS  # noqa: E402
from pioneer.sampling import sample_latents  # noqa: E402
from pioneer.training import build, compile_networks  # noqa: E402

ROWS = {  # name: (precision, channels_last, compiled)
    "fp32-nchw": ("fp32", False, False),
    "fp32-cl": ("fp32", True, False),
    "bf16-cl": ("bf16", True, False),
    "bf16-cl-compiled": ("bf16", True, True),
}


def model_for(resolution: int, precision: str, channels_last: bool, compiled: bool) -> Pioneer:
    config = paper_config(resolution, precision, channels_last, True)
    nets = build(config, torch.device("cpu"))
    if compiled:
        compile_networks(nets)
    phase = len(config.schedule) - 1
    return Pioneer(
        nets.encoder, nets.decoder, config, phase, 1.0, precision=precision,
        channels_last=channels_last,
    )  # fmt: skip


def rate(fn, batch: int, seconds: float) -> float:
    fn()
    fn()  # warm-up (compiled rows: compilation for this shape)
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or count < 2:
        fn()
        count += 1
    return batch * count / (time.perf_counter() - start)


def flops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", default="32,64")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/infer_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    results = []
    for resolution in (int(r) for r in args.resolutions.split(",")):
        widths = PAPER_CHANNELS[: resolution.bit_length() - 2]
        print(f"\n{resolution} px, widths {widths}, {args.threads} threads: img/s (of conv peak)")
        print(f"  {'row':18s} " + " ".join(f"{f'{k} b{b}':>20s}" for k in ("encode", "decode")
              for b in batches) + "  x fp32-nchw", flush=True)  # fmt: skip
        peaks, first = {}, {}
        for name in args.rows.split(","):
            precision, channels_last, compiled = ROWS[name]
            key = (precision, channels_last)
            if key not in peaks:
                peaks[key] = conv_peak(resolution, precision, channels_last, backward=False)
            model = model_for(resolution, precision, channels_last, compiled)
            g = torch.Generator().manual_seed(0)
            cells, ratios = [], []
            for kind in ("encode", "decode"):
                for batch in batches:
                    if kind == "encode":
                        x = torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1
                        call = lambda x=x, m=model: m.encode(x)  # noqa: E731
                    else:
                        z = sample_latents(batch, model.latent_size, g)
                        call = lambda z=z, m=model: m.decode(z)  # noqa: E731
                    img_s = rate(call, batch, args.seconds)
                    share = flops(call) / batch * img_s / 1e9 / peaks[key]
                    first.setdefault((kind, batch), img_s)
                    ratios.append(img_s / first[(kind, batch)])
                    cells.append(f"{img_s:10.2f} ({share:4.0%})")
                    results.append({"resolution": resolution, "row": name, "kind": kind,
                                    "batch": batch, "img_per_s": img_s, "of_peak": share,
                                    "vs_fp32_nchw": ratios[-1]})  # fmt: skip
            print(f"  {name:18s} " + " ".join(f"{c:>20s}" for c in cells)
                  + "  " + " ".join(f"{r:.2f}" for r in ratios), flush=True)  # fmt: skip
        print_peaks(peaks, "conv forward peak")
    save(results, args.out)


if __name__ == "__main__":
    main()
