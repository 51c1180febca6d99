"""`korllama demo` as `make demo` runs it, with the SmolLM2 stage's own wall and CPU seconds printed.

    PYTHONPATH=. /usr/bin/time -v python benchmarks/demo_stage.py /tmp/demo
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import korllama.demo as demo


def main(out: Path) -> dict:
    stage = demo.pretrained_stage

    def timed(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = stage(*args, **kwargs)
        if result is not None:
            print(f"SmolLM2 stage: {time.perf_counter() - wall:.0f} s wall, {time.process_time() - cpu:.0f} s CPU; "
                  f"macro-F1 {result['before']:.3f} -> {result['after']:.3f}", flush=True)
        return result

    demo.pretrained_stage = timed  # _run_demo looks the stage up in its module when it calls it
    result = demo.run_demo(out)
    print({k: result[k] for k in ("seconds", "before", "after", "baseline", "threads")}, result["pretrained"] and
          {k: result["pretrained"][k] for k in ("before", "after")})
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
