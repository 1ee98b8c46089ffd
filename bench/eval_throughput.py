"""Evaluation throughput: images/s of each metric's feature pass on this machine.

    python bench/eval_throughput.py [--resolution 32] [--images 256]

Feature networks are seeded random-init copies of the real architectures (torch-fidelity's
Inception-v3, LPIPS AlexNet): the pretrained weights cannot be downloaded here, and speed
does not depend on the weight values. Rows: Inception-v3 pool features (FID), LPIPS on
face-centre crops (LPIPS, and twice per pair for PPL), MS-SWD descriptors + projections,
SSIM, and the smoke-size decoder for scale. The ratio column is each pass against the
Inception pass, measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pioneer.evaluation import Evaluator  # noqa: E402
from pioneer.quality import ms_swd, ssim  # noqa: E402


def timed(function, images: int) -> float:
    function()  # warm-up
    start = time.perf_counter()
    function()
    return images / (time.perf_counter() - start)


def random_inception() -> torch.nn.Module:
    from torch_fidelity import feature_extractor_inceptionv3 as module

    original = module.FeatureExtractorInceptionV3.load_state_dict
    module.FeatureExtractorInceptionV3.load_state_dict = lambda *a, **k: None
    module.load_state_dict_from_url = lambda *a, **k: None
    try:
        torch.manual_seed(0)
        return module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        module.FeatureExtractorInceptionV3.load_state_dict = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    import lpips

    torch.manual_seed(0)
    size = args.resolution
    x = torch.rand(args.images, 3, size, size) * 2 - 1
    y = torch.rand(args.images, 3, size, size) * 2 - 1
    ev = Evaluator(
        train=torch.zeros(2, 3, size, size, dtype=torch.uint8),
        holdout=torch.zeros(0, 3, size, size, dtype=torch.uint8),
        inception_net=random_inception(),
        lpips_net=lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval(),
    )
    ev.options = type(ev.options)(batch=args.batch)
    rows = {
        "inception (FID)": timed(lambda: ev.inception_features(x, "bench"), args.images),
        "lpips alex (LPIPS; PPL per pair)": timed(lambda: ev.lpips_distance(x, y), args.images),
        "ms_swd (per image, both sets)": timed(lambda: ms_swd(x, y), 2 * args.images),
        "ssim": timed(lambda: ssim(x, y), args.images),
    }
    base = rows["inception (FID)"]
    print(f"\nimg/s at {size} px, batch {args.batch}, {args.images} images, 2 threads, CPU")
    for name, rate in rows.items():
        print(f"{name:>34} {rate:10.1f} img/s  x{rate / base:8.1f} vs inception")


if __name__ == "__main__":
    main()
