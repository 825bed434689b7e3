"""Ingest time and peak memory: Fashion-MNIST (IDX) and a synthetic folder of small PNGs.

Each measurement runs in its own process so its peak RSS (``ru_maxrss``) is its own.
Baselines, measured in the same run:
  * Fashion-MNIST: decompressing the four IDX files into NumPy arrays (no store, no hash).
  * image folder: decoding every PNG into one in-memory list of arrays (the naive reader).
Ratios are ingest / baseline (time and peak memory).

    .venv/bin/python bench/bench_ingest.py [--images 20000] [--size 32]
Writes bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FMNIST = "/usr/share/datasets/fashion-mnist"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(case: str, path: str, out: str) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from components.config import SourceConfig
    from components.data.sources import ingest_sources

    start_mb = _peak_mb()
    start = time.perf_counter()
    if case == "fmnist-ingest":
        source = SourceConfig(kind="idx", path=path, name="fashion-mnist")
        (ds,) = ingest_sources([(source, Path(out))], shard_size=10_000, split_seed=0)
        count = sum(ds.manifest["splits"][s]["count"] for s in ds.split_names)
    elif case == "fmnist-baseline":
        import gzip

        arrays = []
        for file in sorted(Path(path).glob("*.gz")):
            with gzip.open(file) as handle:
                arrays.append(np.frombuffer(handle.read(), np.uint8))
        count = 70_000
    elif case == "folder-ingest":
        source = SourceConfig(kind="image_folder", path=path, name="folder")
        (ds,) = ingest_sources([(source, Path(out))], shard_size=10_000, split_seed=0)
        count = sum(ds.manifest["splits"][s]["count"] for s in ds.split_names)
    elif case == "folder-baseline":
        from PIL import Image

        images = []
        for file in sorted(Path(path).rglob("*.png")):
            with Image.open(file) as image:
                images.append(np.asarray(image.convert("RGB")))
        count = len(images)
    else:
        raise SystemExit(f"unknown case {case}")
    return {"case": case, "images": count, "seconds": time.perf_counter() - start,
            "peak_rss_mb": _peak_mb(), "import_rss_mb": start_mb}


def measure(case: str, path: str, out: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", case, path, out],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_folder(root: Path, images: int, size: int, classes: int = 10) -> float:
    import numpy as np
    from PIL import Image

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--worker", nargs=3)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    results: dict = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                                f"{__import__('os').cpu_count()} cpus",
                     "python": platform.python_version()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        results["fmnist"] = {"ingest": measure("fmnist-ingest", FMNIST, str(tmp_path / "fm")),
                             "baseline": measure("fmnist-baseline", FMNIST, "")}
        quarter = args.images // 4
        make_folder(tmp_path / "png-quarter", quarter, args.size)
        small = measure("folder-ingest", str(tmp_path / "png-quarter"), str(tmp_path / "fq"))
        made = make_folder(tmp_path / "png", args.images, args.size)
        results["folder"] = {"images": args.images, "size": args.size, "make_seconds": made,
                             "ingest_quarter": small,
                             "ingest": measure("folder-ingest", str(tmp_path / "png"), str(tmp_path / "f")),
                             "baseline": measure("folder-baseline", str(tmp_path / "png"), "")}
    for name in ("fmnist", "folder"):
        ingest, base = results[name]["ingest"], results[name]["baseline"]
        results[name]["time_ratio"] = ingest["seconds"] / base["seconds"]
        results[name]["memory_ratio"] = ingest["peak_rss_mb"] / base["peak_rss_mb"]
        print(f"{name}: ingest {ingest['images']} images in {ingest['seconds']:.1f} s, peak RSS "
              f"{ingest['peak_rss_mb']:.0f} MB | baseline {base['seconds']:.1f} s, "
              f"{base['peak_rss_mb']:.0f} MB | ratio time {results[name]['time_ratio']:.2f}x, "
              f"memory {results[name]['memory_ratio']:.2f}x")
    small = results["folder"]["ingest_quarter"]
    print(f"folder, a quarter of the images ({small['images']}): ingest {small['seconds']:.1f} s, "
          f"peak RSS {small['peak_rss_mb']:.0f} MB (the writer holds at most about two shards, "
          f"so memory grows with the shard size, not with the data set)")
    out = ROOT / "bench" / "results" / "ingest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
