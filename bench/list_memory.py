"""What a streamed list parse would save: ``python -m bench.list_memory --size 100000``.

The worker's peak RSS during a large sweep is reached inside ``TogetherClient.list_endpoints`` (the whole body is
read, then ``TypeAdapter.validate_json`` parses it in one go). This compares, each in a fresh process and on the
same simulated list:

* ``whole``: ``list_endpoints`` as the worker calls it;
* ``per-item``: the same body, but each endpoint decoded (``json``'s C scanner) and validated on its own, so
  only one endpoint's intermediate form exists at a time. The body itself is still held whole; a parse fed from
  the response stream would not even hold that.

It prints each process's RSS before, after and at its peak (VmHWM), in MB. Nothing here changes the app.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.procs import ROOT, Procs, Simulator
from bench.run import API_KEY, population

_CHILD = r"""
import gc, json, sys
from pydantic import TypeAdapter
from worker.together import Endpoint, TogetherClient

gc.disable()  # as the sweep task runs

def mb():
    with open("/proc/self/status") as fh:
        fields = dict(line.split(":", 1) for line in fh)
    return {k: round(int(fields[k].split()[0]) / 1024) for k in ("VmRSS", "VmHWM")}

base_url, key, mode = sys.argv[1:4]
client = TogetherClient(base_url, key, 60)
try:
    client.get_endpoint("endpoint-warmup")  # the connection and the client's imports, outside the figure
except Exception:
    pass
before = mb()
if mode == "whole":
    endpoints = client.list_endpoints(types=["dedicated"])
else:
    one = TypeAdapter(Endpoint)
    response = client._http.get("/endpoints", params={"type": "dedicated"})
    body = response.content.decode()
    del response  # the bytes go; the text stays until every item is parsed
    decoder, at, endpoints = json.JSONDecoder(), body.index("[", body.index('"data"')) + 1, []
    while True:
        while body[at] in " ,\n\r\t":
            at += 1
        if body[at] == "]":
            break
        item, at = decoder.raw_decode(body, at)
        endpoints.append(one.validate_python(item))
    del body
after = mb()
print(json.dumps({"mode": mode, "endpoints": len(endpoints), "before": before, "after": after}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.list_memory", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=100_000)
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="janitor-listmem-"))
    procs = Procs(workdir)
    try:
        sim = Simulator(procs, API_KEY)
        sim.reset(population(args.size, 10))
        for mode in ("whole", "per-item"):
            run = subprocess.run(
                [sys.executable, "-c", _CHILD, sim.base_url, API_KEY, mode],
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=True,
            )
            result = json.loads(run.stdout.strip().splitlines()[-1])
            before, after = result["before"], result["after"]
            print(
                f"{mode:>8}: {result['endpoints']} endpoints; RSS {before['VmRSS']} MB before, {after['VmRSS']} MB "
                f"after, peak {after['VmHWM']} MB (+{after['VmHWM'] - before['VmRSS']} MB over before)"
            )
        sim.close()
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
