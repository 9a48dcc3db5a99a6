"""Time `build --preset offline-mini` with the weight cache warm (the second build).

Last line: {"second_build_s": …, "target_s": 60, "ok": …}. The first build on a fresh machine
also converts Whisper (≈ 5 s) and dequantises SmolLM2's GGUF (≈ 30 s); both are cached.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from speech_llama.presets import build_offline_mini

TARGET_S = 60.0


def timed_build(out_dir: Path) -> float:
    started = time.perf_counter()
    build_offline_mini(out_dir)
    return time.perf_counter() - started


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        first_s = timed_build(Path(scratch) / "first")
        second_s = timed_build(Path(scratch) / "second")
    print(json.dumps({"first_build_s": round(first_s, 2), "second_build_s": round(second_s, 2),
                      "target_s": TARGET_S, "ok": second_s <= TARGET_S}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
