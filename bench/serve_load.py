"""HTTP service load: latency p50/p99 and throughput of /v1/sample and /v1/reconstruct.

    python bench/serve_load.py [--models small,full] [--clients 1,8,32] [--seconds 6]

For each model (small: the default preset's widths at 32 px; full: the paper's 512
channels up to 32 px; untrained weights, speed does not depend on them) the service runs
twice, batched (serve.batch, max_batch_size 32) and with max_batch_size 1. Closed-loop
clients (bench/http_load.py in its own process, one request after another on a keep-alive
connection, one image each) load it for --seconds per point (--full-seconds for the full
model). Each point also prints the decoder's mean batch and its own forward speed inside
the replica, and the CPU per request of each process (proxy, ingress, models, the rest of
Ray, the client) read from /proc.
Beside it, in this same run:
  - the raw in-process forward of the same batch (1 image and 32), no HTTP;
  - the HTTP round trip of /v1/info (no model);
  - the compute limit: the conv peak measured now (3x3 conv forward, fastest of the
    network's shapes, batch 32) divided by FLOPs per image (FlopCounterMode).
Targets: throughput at 32 clients >= 90% of the compute limit; p50 at 1 client <= 1.2x
(raw forward of 1 + HTTP round trip). The load generator shares the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pioneer import checkpoint  # noqa: E402
from pioneer.api import Pioneer  # noqa: E402
from pioneer.config import BUNDLED_CELEBA, preset  # noqa: E402
from pioneer.precision import PRECISIONS, autocast  # noqa: E402
from pioneer.sampling import sample_latents  # noqa: E402
from pioneer.schedule import total_images  # noqa: E402
from pioneer.training import build  # noqa: E402

MODELS = {"small": (128, 128, 64, 64), "full": (512, 512, 512, 512)}
FACE = BUNDLED_CELEBA / "images" / "000001.jpg"
MODEL_SIDE = ("Encoder", "Decoder")  # the deployments whose batches are counted


def make_checkpoint(name: str, folder: Path) -> Path:
    base = preset("default")
    config = replace(base, name=name, model=replace(base.model, channels=MODELS[name]))
    nets = build(config, torch.device("cpu"))
    phase = len(config.schedule) - 1
    progress = {
        "images_seen": total_images(config.schedule),
        "phase": phase,
        "alpha": 1.0,
        "resolution": 4 * 2**phase,
        "total_images": total_images(config.schedule),
    }
    return checkpoint.save(folder / name / "checkpoint_0", config, progress, nets.state_dict())


def flops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn()
    return counter.get_total_flops()


def timed(fn, seconds: float = 2.0) -> float:
    """Median seconds per call."""
    fn()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def conv_peak(model: Pioneer) -> float:
    """FLOP/s of the fastest 3x3 conv forward among the decoder's (channels, side) shapes,
    at the model's precision, channels_last (as the API runs it)."""
    best = 0.0
    context = autocast(model.precision, model.device)
    for phase, width in enumerate(model.config.model.channels[: model.phase + 1]):
        side = 4 * 2**phase
        conv = torch.nn.Conv2d(width, width, 3, padding=1).to(memory_format=torch.channels_last)
        x = torch.randn(32, width, side, side).contiguous(memory_format=torch.channels_last)

        def run(conv=conv, x=x):
            with torch.inference_mode(), context:
                conv(x)

        best = max(best, flops(run) / timed(run, 1.0))
    return best


def raw_figures(model: Pioneer) -> dict:
    x = model.load_images([FACE])
    z1 = sample_latents(1, model.latent_size, torch.Generator().manual_seed(0))
    z32 = sample_latents(32, model.latent_size, torch.Generator().manual_seed(1))
    x32 = x.expand(32, -1, -1, -1).contiguous()
    out = {
        "sample_flops": flops(lambda: model.decode(z1)),
        "reconstruct_flops": flops(lambda: model.reconstruct(x)),
        "sample_raw_1_s": timed(lambda: model.decode(z1)),
        "sample_raw_32_s": timed(lambda: model.decode(z32)),
        "reconstruct_raw_1_s": timed(lambda: model.reconstruct(x)),
        "reconstruct_raw_32_s": timed(lambda: model.reconstruct(x32)),
        "conv_flops_per_s": conv_peak(model),
    }
    return out


def load(port: int, endpoint: str, clients: int, seconds: float) -> dict:
    """Closed-loop clients (bench/http_load.py, in a process of its own), one image each."""
    request = {
        "sample": ["/v1/sample", "--json", '{"n": 1}'],
        "reconstruct": ["/v1/reconstruct", "--file", str(FACE)],
        "info": ["/v1/info"],
    }[endpoint]
    command = [sys.executable, str(Path(__file__).with_name("http_load.py")), *request]
    command += ["--port", str(port), "--clients", str(clients), "--seconds", str(seconds)]
    command += ["--warmup", str(min(1.0, seconds / 4))]
    before = cpu_by_process()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    after = cpu_by_process()
    figures = json.loads(done.stdout)
    answered = max(1, figures["answered_in_all"])
    figures["cpu_ms_per_request"] = {
        name: 1000 * (after.get(name, 0.0) - before.get(name, 0.0)) / answered for name in after
    }
    return figures


PROCESSES = {  # Ray process titles -> what the bench calls them
    "ray::ProxyActor": "proxy",
    "ray::ServeReplica:bench:Service": "ingress",
    "ray::ServeReplica:bench:Decoder": "decoder",
    "ray::ServeReplica:bench:Encoder": "encoder",
}


def cpu_by_process() -> dict[str, float]:
    """CPU seconds (user + system) used so far by the service's processes (Linux /proc),
    the rest of Ray's together as "other Ray" (controller, GCS, raylet, agents)."""
    totals: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # the process ended meanwhile
            continue
        name = next((v for k, v in PROCESSES.items() if command.startswith(k)), None)
        if name is None and "ray" in command:
            name = "other Ray"
        if name is not None:
            totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return totals


def round_trip(port: int) -> float:
    """Median seconds of GET /v1/info from one client: the HTTP path without a model."""
    return load(port, "info", 1, 2.0)["p50_ms"] / 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="small,full")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=6.0, help="per point, small model")
    parser.add_argument(
        "--full-seconds",
        type=float,
        default=30.0,
        help="per point, full model (a batch of 32 takes seconds: a short window counts few)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads per model replica")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument(
        "--access-log",
        default="on",
        choices=("on", "off"),
        help="off: no per-request log lines in the proxy and replicas (Serve's INFO access log)",
    )
    parser.add_argument("--out", default="bench/results/serve_load.json")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]

    import ray
    from ray import serve

    from serve.app import build as build_app

    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    logging = {"enable_access_log": args.access_log == "on"}
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=logging)
    results = {}
    for name in args.models.split(","):
        path = make_checkpoint(name, folder)
        model = Pioneer.from_checkpoint(path, precision=args.precision)  # as the replicas
        raw = raw_figures(model)
        results[name] = {"raw": raw, "runs": {}}
        print(
            f"\n{name}: {model.resolution} px, channels {model.config.model.channels}; "
            f"conv peak {raw['conv_flops_per_s'] / 1e9:.0f} GFLOP/s; "
            f"GFLOP/img sample {raw['sample_flops'] / 1e9:.2f}, "
            f"reconstruct {raw['reconstruct_flops'] / 1e9:.2f}",
            flush=True,
        )
        for batch in (32, 1):
            options = {
                "checkpoint": str(path),
                "max_batch_size": batch,
                "threads": args.threads,
                "precision": args.precision,
            }
            serve.run(build_app(options), name="bench", route_prefix="/", logging_config=logging)
            rtt = round_trip(port)
            results[name]["runs"][f"batch{batch}"] = {"http_round_trip_s": rtt}
            for endpoint in ("sample", "reconstruct"):
                limit = raw["conv_flops_per_s"] / raw[f"{endpoint}_flops"]
                for n in clients:
                    stats = [serve.get_deployment_handle(d, app_name="bench") for d in MODEL_SIDE]
                    for handle in stats:
                        handle.stats.remote().result()  # reset the counters
                    seconds = args.full_seconds if name == "full" else args.seconds
                    figures = load(port, endpoint, n, seconds)
                    decoder = stats[1].stats.remote().result()
                    figures["mean_batch"] = decoder["images"] / max(1, decoder["batches"])
                    # the decoder's own forward speed under load (contention shows here)
                    figures["decoder_img_per_forward_s"] = decoder["images"] / max(
                        1e-9, decoder["forward_s"]
                    )
                    figures["compute_limit_img_per_s"] = limit
                    figures["of_limit"] = figures["img_per_s"] / limit
                    if n == 1:  # target <= 1.2
                        floor_ms = (raw[f"{endpoint}_raw_1_s"] + rtt) * 1000
                        figures["p50_over_raw_plus_rtt"] = figures["p50_ms"] / floor_ms
                    results[name]["runs"][f"batch{batch}"][f"{endpoint}_{n}"] = figures
                    print(
                        f"  max_batch_size {batch:2d} {endpoint:11s} {n:2d} clients: "
                        f"{figures['img_per_s']:7.1f} img/s ({figures['of_limit']:5.1%} of "
                        f"limit {limit:.1f}), p50 {figures['p50_ms']:7.1f} ms, "
                        f"p99 {figures['p99_ms']:7.1f} ms, mean decoder batch "
                        f"{figures['mean_batch']:4.1f} "
                        f"({figures['decoder_img_per_forward_s']:.1f} img per forward-second), "
                        f"{figures['failures']} failed; CPU ms per request: "
                        + ", ".join(
                            f"{k} {v:.1f}" for k, v in sorted(figures["cpu_ms_per_request"].items())
                        )
                        + f", client {figures['client_cpu_s_per_request'] * 1000:.2f}"
                        + (
                            f"; p50 / (raw {raw[f'{endpoint}_raw_1_s'] * 1000:.1f} ms + "
                            f"HTTP {rtt * 1000:.1f} ms) = {figures['p50_over_raw_plus_rtt']:.2f}"
                            if n == 1
                            else ""
                        ),
                        flush=True,
                    )
            serve.delete("bench")
        for endpoint in ("sample", "reconstruct"):
            batched = results[name]["runs"]["batch32"][f"{endpoint}_{clients[-1]}"]["img_per_s"]
            single = results[name]["runs"]["batch1"][f"{endpoint}_{clients[-1]}"]["img_per_s"]
            raw32 = 32 / raw[f"{endpoint}_raw_32_s"]
            print(
                f"  {endpoint}: batched / unbatched at {clients[-1]} clients = "
                f"{batched / single:.2f}x; raw forward of 32 in-process {raw32:.1f} img/s, "
                f"of 1 {1 / raw[f'{endpoint}_raw_1_s']:.1f} img/s",
                flush=True,
            )
    serve.shutdown()
    ray.shutdown()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
