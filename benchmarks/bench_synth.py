"""Time `mrbench data synth` for the default dataset (target: under 60 s on 2 cores).

Runs the default SynthSpec (12 subjects × 4 contrasts × 24 slices, 128², single-coil)
into a temporary directory, serially and with 2 processes. Prints one JSON object.
"""

import json
import os
import tempfile
import time

from mrbench.data.synth.build import SynthSpec, synthesize


def main():
    spec = SynthSpec()
    out = {"benchmark": "synth_default", "spec": spec.record(), "cpu_count": os.cpu_count()}
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            synthesize(spec, tmp, jobs=jobs)
            out[f"seconds_jobs{jobs}"] = round(time.perf_counter() - t0, 2)
    out["target_seconds"] = 60
    del out["spec"]["sequences"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
